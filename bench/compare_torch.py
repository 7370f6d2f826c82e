"""fastcnn and torch side by side on the same shapes, in one process: prints the ratio table.

    python bench/compare_torch.py [--threads N] [--filter TEXT] [--repeat R] [--rounds K]
    python bench/compare_torch.py --scaling | --profile [FILTER]      # fastcnn alone

The README's table is this script's output: python bench/compare_torch.py --rounds 3

The cases and the timing live in ``fastcnn.benchmarks`` so that an installed fastcnn runs the
same table with ``fastcnn bench``.
"""
from fastcnn.benchmarks import main

if __name__ == "__main__":
    main()
