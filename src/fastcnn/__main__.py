from fastcnn.cli import main

raise SystemExit(main())
