"""Registry.build: one builder for every kind (layers, losses, optimizers, schedulers, datasets):
the config's keys checked against the signature, close names suggested, the config path first."""
import numpy as np
import pytest

import fastcnn
from fastcnn.layers.base import Parameter
from fastcnn.registry import ConfigError, Registry


@pytest.fixture
def things():
    registry = Registry("thing")

    @registry.register("box", aliases=("Box",))
    class Box:
        def __init__(self, size, colour="red"):
            if size < 0:
                raise ValueError(f"box: size must be >= 0, got {size}")
            self.size, self.colour = size, colour

    @registry.register("bag")
    def bag(owner, *, items=3, **extra):
        return owner, items, extra

    return registry


def test_build_passes_options_and_positional_arguments(things):
    box = things.build({"type": "Box", "size": 2})
    assert (box.size, box.colour) == (2, "red")
    assert things.build("bag", "ann") == ("ann", 3, {})
    # a target taking **kwargs checks its own keys: build passes them on
    assert things.build({"type": "bag", "other": 1}, "ann") == ("ann", 3, {"other": 1})


@pytest.mark.parametrize("config, match", [
    ({"type": "box", "szie": 1}, r"^things\[2\]\.szie: unknown option for thing 'box'; "
                                 r"did you mean 'size'\? \(options: size, colour\)$"),
    ({"type": "box"}, r"^things\[2\] \(box\): missing required option 'size'$"),
    ({"type": "bx"}, r"^things\[2\]\.type: unknown thing 'bx'; did you mean 'box'"),
    ({"size": 1}, r"^things\[2\]: missing 'type': the config must be a dict with 'type' naming "
                  r"the thing \(one of: bag, box\)$"),
    ({"type": "box", "size": -1}, r"^things\[2\] \(box\): size must be >= 0, got -1$"),
])
def test_build_errors_start_with_the_config_path(things, config, match):
    with pytest.raises(ConfigError if "size must" not in match else ValueError, match=match):
        things.build(config, where="things[2]")


def test_build_errors_for_list_entries_name_the_entry_and_its_type(things):
    things.key_paths, things.option = False, "argument"
    with pytest.raises(ConfigError, match=r"^x \(box\): unknown argument 'szie'; did you mean "
                                          r"'size'\? \(arguments: size, colour\)$"):
        things.build({"type": "box", "szie": 1}, where="x")


def test_build_reserved_keys_and_defaults(things):
    box = things.build({"type": "box", "size": 1, "name": "b"}, where="x", reserved=("name",),
                       defaults={"colour": "blue", "weight": 5})
    assert box.colour == "blue"            # weight is not a parameter of box: not passed
    with pytest.raises(ConfigError, match=r"did you mean 'name'\? \(options: name, size"):
        things.build({"type": "box", "size": 1, "nme": 0}, where="x", reserved=("name",))
    with pytest.raises(TypeError, match=r"^x\.type: thing type must be a string, got 3$"):
        things.build({"type": 3}, where="x")


def test_every_kind_builds_through_the_registry_with_its_config_path():
    params = [Parameter(np.zeros(2), "p")]
    with pytest.raises(ConfigError, match=r"^optimizer\.momentun: unknown option for optimizer "
                                          r"'sgd'; did you mean 'momentum'\?"):
        fastcnn.build_optimizer({"type": "sgd", "momentun": 0.9}, params)
    opt = fastcnn.build_optimizer("sgd", params)
    with pytest.raises(ConfigError, match=r"^schedule \(cosine\): missing required option "
                                          r"'T_max'$"):
        fastcnn.build_scheduler({"type": "cosine"}, opt)
    with pytest.raises(ConfigError, match=r"^schedule \(warmup\): then\.tmax: unknown option "
                                          r"for scheduler 'cosine'; did you mean 'T_max'\?"):
        fastcnn.build_scheduler({"type": "warmup", "then": {"type": "cosine", "tmax": 1}}, opt)
    with pytest.raises(ConfigError, match=r"^loss\.label_smothing: unknown option for loss "
                                          r"'cross_entropy'; did you mean 'label_smoothing'\?"):
        fastcnn.build_loss({"type": "cross_entropy", "label_smothing": 0.1})
    with pytest.raises(ValueError, match=r"^data \(npz\): the option 'path'"):
        fastcnn.data.load_dataset({"dataset": "npz"})
