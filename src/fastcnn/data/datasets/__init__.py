"""The built-in datasets, one module per source format (as ``keras/src/datasets/``). Each
module registers its functions in :data:`fastcnn.registry.DATASETS` when imported;
:mod:`fastcnn.data` imports them all."""
