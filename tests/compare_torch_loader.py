"""The repository's bench/compare_torch.py as a module, for the tests that use its torch side
(``to_torch``, the references, the table): it is not part of the installed package."""
import functools
import importlib.util
import pathlib

COMPARE_TORCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "compare_torch.py"


@functools.cache
def compare_torch():
    spec = importlib.util.spec_from_file_location("compare_torch_under_test", COMPARE_TORCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def to_torch(model, torch):
    """bench/compare_torch.py's ``to_torch``: the torch.nn module of a fastcnn model."""
    return compare_torch().to_torch(model, torch)
