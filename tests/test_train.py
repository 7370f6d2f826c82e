"""The training job end to end on tiny configs: CLI, run folder, resume, NaN guard, overrides."""
import json
import os

import numpy as np
import pytest

import fastcnn
from fastcnn.cli import main
from fastcnn.train import Trainer, apply_overrides, resolve_config

TINY = {
    "name": "tiny",
    "model": {"layers": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"type": "relu"}, {"type": "max_pool2d", "kernel_size": 2},
        {"type": "dropout", "p": 0.1},
        {"type": "flatten"}, {"type": "linear", "out_features": 3}]},
    "data": {"dataset": "synthetic", "n": 240, "num_classes": 3, "shape": [1, 8, 8],
             "validation_split": 0.2, "augment": {"horizontal_flip": True}},
    "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"type": "step", "step_size": 2, "gamma": 0.5},
    "train": {"epochs": 4, "batch_size": 16, "seed": 3},
}


def _quiet(*args, **kwargs):
    pass


def test_run_folder_and_metrics(tmp_path):
    metrics = Trainer(TINY, tmp_path / "run", log=_quiet, progress=False).fit()
    files = set(os.listdir(tmp_path / "run"))
    assert {"config.json", "history.json", "metrics.json", "best.fcnn", "last.fcnn"} <= files
    assert {"curves.png", "confusion.png"} <= files
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert [h["lr"] for h in history] == pytest.approx([0.05, 0.05, 0.025, 0.025])  # lr used
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test_accuracy"] == metrics["test_accuracy"] > 0.6
    assert {"test_loss", "train_time_s", "samples_per_s"} <= set(saved)
    assert not [f for f in files if f.endswith(".tmp")]


def test_resume_gives_the_same_weights(tmp_path):
    Trainer(TINY, tmp_path / "full", log=_quiet, progress=False).fit()
    Trainer(TINY, tmp_path / "part", overrides=["train.epochs=2"], log=_quiet, progress=False).fit()
    Trainer(TINY, tmp_path / "part", resume=True, log=_quiet, progress=False).fit()
    full = fastcnn.load(tmp_path / "full" / "last.fcnn").state_dict()
    part = fastcnn.load(tmp_path / "part" / "last.fcnn").state_dict()
    for key in full:
        np.testing.assert_array_equal(full[key], part[key], err_msg=key)
    history = json.loads((tmp_path / "part" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


def test_nan_guard_keeps_last_good_checkpoint(tmp_path, capsys):
    code = main(["train", json.dumps(TINY) if False else _write(tmp_path, TINY), "--out",
                 str(tmp_path / "run"), "--set", "optimizer.lr=1e30", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "loss became" in err and "last good checkpoint" in err


def _write(tmp_path, config):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_cli_train_eval_predict_summary(tmp_path, capsys):
    config = _write(tmp_path, TINY)
    out = tmp_path / "run"
    assert main(["train", config, "--out", str(out), "--epochs", "2", "--quiet"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["epochs_run"] == 2
    assert main(["eval", str(out / "best.fcnn")]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((2, 8, 8)).astype(np.float32))
    assert main(["predict", str(out / "best.fcnn"), str(tmp_path / "x.npy"), "--top", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and len(lines[0]["top"]) == 2
    assert main(["summary", "lenet5"]) == 0
    text = capsys.readouterr().out
    assert "61,706" in text and "max_pool2d" in text


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    bad = dict(TINY, data={"dataset": "mnist_smaple"})
    assert main(["train", _write(tmp_path, bad), "--out", str(tmp_path / "r")]) == 2
    assert "did you mean 'mnist_sample'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing.fcnn")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_overrides():
    config = {"train": {"epochs": 3}, "optimizer": {"type": "sgd"}}
    apply_overrides(config, ["train.epochs=5", "optimizer.lr=0.1", "optimizer.nesterov=true",
                             "data.dataset=npz", "data.augment={\"horizontal_flip\": true}",
                             "name=my run"])
    assert config["train"]["epochs"] == 5 and config["optimizer"]["lr"] == 0.1
    assert config["optimizer"]["nesterov"] is True and config["data"]["dataset"] == "npz"
    assert config["data"]["augment"] == {"horizontal_flip": True} and config["name"] == "my run"
    with pytest.raises(ValueError, match="--set expects key=value"):
        apply_overrides(config, ["train.epochs"])


def test_config_errors():
    with pytest.raises(ValueError, match="unknown section 'optimiser'"):
        resolve_config({"model": "lenet5", "optimiser": {}})
    with pytest.raises(ValueError, match="unknown train option"):
        resolve_config({"model": "lenet5", "train": {"epoch": 3}})
    with pytest.raises(ValueError, match="no bundled config 'lenet6'"):
        resolve_config({"model": "lenet6"})


@pytest.mark.parametrize("name,shape", [("lenet5", (1, 28, 28)), ("vgg_small", (3, 32, 32)),
                                        ("resnet_small", (3, 32, 32)), ("unet_small", (1, 32, 32))])
def test_bundled_models_build_and_backpropagate(name, shape):
    from fastcnn.train import bundled_config
    model = fastcnn.build_model(bundled_config(name))
    x = np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32)
    y = model(x)
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape and np.isfinite(dx).all()
    assert model.to_config()["layers"] == fastcnn.build_model(model.to_config()).to_config()["layers"]


def test_ctrl_c_keeps_the_last_completed_epoch(tmp_path, monkeypatch):
    original = Trainer._train_epoch

    def interrupted(self, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", interrupted)
    messages = []
    metrics = Trainer(TINY, tmp_path / "run", log=messages.append, progress=False).fit()
    assert metrics["interrupted"] is True and metrics["epochs_run"] == 2
    assert any("--resume" in m for m in messages)
    assert fastcnn.load_checkpoint(tmp_path / "run" / "last.fcnn").extra["epoch"] == 2
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    Trainer(TINY, tmp_path / "run", resume=True, log=_quiet, progress=False).fit()
    Trainer(TINY, tmp_path / "full", log=_quiet, progress=False).fit()
    a = fastcnn.load(tmp_path / "run" / "last.fcnn").state_dict()
    b = fastcnn.load(tmp_path / "full" / "last.fcnn").state_dict()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_evaluate_restores_the_model_mode_and_keeps_no_loss_state():
    from fastcnn.train import evaluate
    model = fastcnn.build_model({"input_shape": [4], "seed": 0, "layers": [
        {"type": "linear", "out_features": 3}]})
    loss = fastcnn.build_loss("cross_entropy")
    x = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    y = np.arange(10) % 3
    for mode in (True, False):
        model.train(mode)
        value, acc, preds = evaluate(model, loss, x, y, batch_size=4)
        assert model.training is mode and preds.shape == (10,) and 0 <= acc <= 1
        assert value == pytest.approx(float(loss.value(model(x), y)), rel=1e-6)
    with pytest.raises(RuntimeError, match="needs a call first"):
        loss.backward()
