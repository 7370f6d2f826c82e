"""The ``fastcnn`` command as a user runs it: a subprocess, real files, from other folders.

One small MNIST run (the default recipe, 1 epoch on 1,000 digits) is trained once for the
module; predict and eval are checked against the same model applied to the arrays directly."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastcnn

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def fastcnn_cli(*args, cwd=None):
    """``python -m fastcnn ARGS`` in ``cwd``; the CompletedProcess (text)."""
    env = dict(os.environ, FASTCNN_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "fastcnn", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """A run of the default config, trained through the CLI: (run folder, test images, labels)."""
    folder = tmp_path_factory.mktemp("cli")
    done = fastcnn_cli("train", "--out", folder / "run", "--epochs", "1", "--set",
                       "data.limit=1000", "--quiet", cwd=folder)
    assert done.returncode == 0, done.stderr
    splits = fastcnn.data.load_dataset({"dataset": "mnist_sample", "limit": 1000})
    return folder / "run", splits.test[0], splits.test[1]


def _probabilities(model, x):
    logits = model(model.preprocess(x))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _save_png(path, pixels):
    """pixels in [0, 1], (H, W) gray or (H, W, 3) RGB, stored as 8-bit."""
    Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(path)


def test_predict_reads_images_of_any_size_and_folders_and_prints_one_json_document(mnist_run,
                                                                                  tmp_path):
    """A 28x28 grayscale PNG gives the same probabilities as its array; a 280x280 RGB PNG (the
    same digit, 10x larger) is resized to 28x28 and gets the same class; a folder stands for
    its image files; --json prints one document."""
    run, x, _ = mnist_run
    model = fastcnn.load(run / "best.fcnn").eval()
    picks = [0, 120, 240, 360, 480, 600, 720, 840]
    expected = _probabilities(model, x[picks])
    images = tmp_path / "images"
    images.mkdir()
    for i, k in enumerate(picks):
        _save_png(images / f"{i}_gray28.png", x[k, 0])
        big = np.kron(x[k, 0], np.ones((10, 10)))
        _save_png(images / f"{i}_rgb280.png", np.stack([big] * 3, axis=-1))
    done = fastcnn_cli("predict", run / "best.fcnn", images, "--json", "--top", "10",
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)                 # one JSON document, not JSON lines
    assert document["input_shape"] == [1, 28, 28]
    by_name = {os.path.basename(p["input"]): p for p in document["predictions"]}
    assert len(by_name) == 2 * len(picks)
    for i in range(len(picks)):
        small, large = by_name[f"{i}_gray28.png"], by_name[f"{i}_rgb280.png"]
        assert small["size"] == [28, 28] and large["size"] == [280, 280]
        assert not small["inverted"] and not large["inverted"]
        got = np.zeros(10)
        for entry in small["top"]:
            got[entry["class"]] = entry["probability"]
        np.testing.assert_allclose(got, expected[i], atol=2e-6)
        assert small["prediction"] == large["prediction"] == int(expected[i].argmax())

    readable = fastcnn_cli("predict", run / "best.fcnn", images / "0_rgb280.png", cwd=tmp_path)
    assert readable.returncode == 0, readable.stderr
    line, = readable.stdout.splitlines()
    assert line.startswith(f"{images / '0_rgb280.png'}  {int(expected[0].argmax())}  ")
    assert "resized from 280x280" in line


def test_black_on_white_digits_are_inverted_for_a_white_on_black_model(mnist_run, tmp_path):
    """MNIST digits are white on black: the same digits saved black on white are detected
    (light background, dark training images) and inverted, giving the array's predictions;
    --invert no shows what happened before (other answers)."""
    run, x, _ = mnist_run
    model = fastcnn.load(run / "best.fcnn").eval()
    picks = list(range(0, 1000, 50))
    expected = _probabilities(model, x[picks]).argmax(axis=1)
    for i, k in enumerate(picks):
        _save_png(tmp_path / f"digit{i:02d}.png", 1 - x[k, 0])
    auto = fastcnn_cli("predict", run / "best.fcnn", tmp_path, "--json", cwd=tmp_path)
    assert auto.returncode == 0, auto.stderr
    predictions = json.loads(auto.stdout)["predictions"]
    assert all(p["inverted"] for p in predictions)
    assert [p["prediction"] for p in predictions] == expected.tolist()
    raw = fastcnn_cli("predict", run / "best.fcnn", tmp_path, "--json", "--invert", "no",
                      cwd=tmp_path)
    unchanged = [p["prediction"] for p in json.loads(raw.stdout)["predictions"]]
    assert sum(a != b for a, b in zip(unchanged, expected)) >= len(picks) // 2


def test_predict_errors_name_the_input(mnist_run, tmp_path):
    run = mnist_run[0]
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 32, 32), np.float32))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.full((28, 28), 300, np.uint16)).save(tmp_path / "deep.png")
    for arg, message in [("missing.png", "input not found: missing.png"),
                         ("notes.txt", "notes.txt: not an image"),
                         ("empty", "a folder with no image or array file"),
                         ("wrong.npy", "holds images of shape (3, 32, 32), the model takes "
                                       "(1, 28, 28): arrays are not resized"),
                         ("broken.png", "broken.png: not a readable image"),
                         ("deep.png", "image (16-bit or floating-point pixels): save it "
                                      "with 8 bits per channel")]:
        done = fastcnn_cli("predict", run / "best.fcnn", arg, cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr, (arg, done.stderr)
        assert "Traceback" not in done.stderr
    fastcnn.save(fastcnn.build_model("unet_small"), tmp_path / "unet.fcnn")
    done = fastcnn_cli("predict", tmp_path / "unet.fcnn", "wrong.npy", cwd=tmp_path)
    assert done.returncode == 2
    assert "scores classifiers (an output of class scores per sample), and this model's " \
           "output is (2, 32, 32)" in done.stderr


def test_eval_works_from_any_folder_and_on_other_data(tmp_path):
    """A run whose data is an .npz given by a relative path: its config.json stores the path
    absolute, so eval works from another folder; --data evaluates on another .npz."""
    rng = np.random.default_rng(0)
    work = tmp_path / "project"
    work.mkdir()
    x = rng.integers(0, 256, (120, 1, 8, 8), dtype=np.uint8)
    y = (x[:, 0, :4].mean(axis=(1, 2)) > x[:, 0, 4:].mean(axis=(1, 2))).astype(np.int64)
    np.savez(work / "data.npz", x=x[:80], y=y[:80], x_test=x[80:], y_test=y[80:])
    np.savez(work / "other.npz", x=x[:30], y=y[:30])
    config = {"model": {"layers": [{"type": "flatten"}, {"type": "linear", "out_features": 2}]},
              "data": {"dataset": "npz", "path": "data.npz", "validation_split": 0},
              "train": {"epochs": 2, "batch_size": 16}}
    (work / "cfg.json").write_text(json.dumps(config))
    done = fastcnn_cli("train", "cfg.json", "--out", "runs/a", "--quiet", cwd=work)
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout.splitlines()[-1])
    stored = json.loads((work / "runs" / "a" / "config.json").read_text())
    assert stored["data"]["path"] == str(work / "data.npz")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = fastcnn_cli("eval", work / "runs" / "a" / "best.fcnn", "--json", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["split"] == "test" and result["samples"] == 40
    assert result["accuracy"] == pytest.approx(metrics["test_accuracy"])
    done = fastcnn_cli("eval", work / "runs" / "a" / "best.fcnn", "--data",
                       work / "other.npz", "--json", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    other = json.loads(done.stdout)
    model = fastcnn.load(work / "runs" / "a" / "best.fcnn").eval()
    accuracy = float((model(model.preprocess(x[:30] / np.float32(255))).argmax(1)
                      == y[:30]).mean())
    assert other["split"] == "train" and other["samples"] == 30
    assert other["accuracy"] == pytest.approx(accuracy)
    readable = fastcnn_cli("eval", work / "runs" / "a" / "best.fcnn", cwd=elsewhere)
    assert readable.stdout.startswith("test accuracy ")
    # a run from before paths were stored absolute: found from the run folder's parents
    old = fastcnn.load_checkpoint(work / "runs" / "a" / "best.fcnn")
    old.extra["train_config"]["data"]["path"] = "data.npz"
    fastcnn.save(old.model, work / "runs" / "a" / "old.fcnn", extra=old.extra)
    done = fastcnn_cli("eval", work / "runs" / "a" / "old.fcnn", "--json", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["accuracy"] == result["accuracy"]


def test_overrides_reach_bundled_models_and_merge_dicts(tmp_path):
    """--set into a model given by name; a dict merged into the recipe's augment (the
    README's example keeps random_crop); data.normalize honoured; a model config trains on
    the default data; a missing file is named."""
    done = fastcnn_cli("train", "--out", "run", "--epochs", "1", "--quiet",
                       "--set", "model.layers.0.out_channels=12",
                       "--set", 'data.augment={"horizontal_flip": true}',
                       "--set", "data.limit=300", "--set", "data.normalize=false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["layers"][0]["out_channels"] == 12
    assert config["data"]["augment"] == {"random_crop": {"padding": 2}, "horizontal_flip": True}
    model = fastcnn.load(tmp_path / "run" / "best.fcnn")
    assert model["0"].weight.data.shape[0] == 12 and model.preprocessing is None

    done = fastcnn_cli("train", "lenet5", "--out", "lenet", "--epochs", "1", "--quiet",
                       "--set", "data.limit=300",
                       "--set", 'data.normalize={"mean": [0.5], "std": [0.25]}', cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "lenet" / "config.json").read_text())
    assert config["model"]["name"] == "lenet5" and config["data"]["dataset"] == "mnist_sample"
    assert fastcnn.load(tmp_path / "lenet" / "best.fcnn").preprocessing == {"mean": (0.5,),
                                                                             "std": (0.25,)}
    for args, message in [
            (["resnet_small"], "fastcnn train resnet_small --set data.dataset=cifar10 --set "
                               "data.root=DIR"),
            (["nonexistent.json"], "config file not found: nonexistent.json"),
            (["--set", "data.normalize=yes"], "data.normalize: expected true"),
            (["--set", 'data.normalize={"mean": [0.1, 0.2], "std": [1, 1]}'],
             "data.normalize.mean: the images have 1 channel(s), got 2 values")]:
        done = fastcnn_cli("train", *args, "--out", "bad", cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
        assert not (tmp_path / "bad").exists()


def test_curves_mark_the_best_epoch_and_show_the_learning_rate(mnist_run):
    """curves.png: the best epoch (the one best.fcnn holds) is a dashed line with a star on the
    validation loss, and a third panel shows the learning rate of each epoch."""
    pytest.importorskip("matplotlib")
    from fastcnn import plots
    history = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.5, "val_loss": v,
                "val_acc": 0.6, "lr": 0.1 * 0.5 ** e} for e, v in
               enumerate([1.0, 0.7, 0.5, 0.6, 0.55], start=1)]
    assert plots.best_epoch(history) == 3
    fig = plots.curves_figure(history)
    loss_panel, _, lr_panel = fig.axes
    dashed = [line for line in loss_panel.lines if line.get_linestyle() == "--"]
    assert [list(line.get_xdata()) for line in dashed] == [[3, 3]]
    star, = [line for line in loss_panel.lines if line.get_marker() == "*"]
    assert (list(star.get_xdata()), list(star.get_ydata())) == ([3], [0.5])
    assert list(lr_panel.lines[0].get_ydata()) == [h["lr"] for h in history]
    assert lr_panel.get_ylabel().startswith("learning rate")
    run = mnist_run[0]                            # a real run wrote its own
    assert (run / "curves.png").stat().st_size > 10_000


def test_every_option_of_every_command_has_help_and_summary_reads_checkpoints(mnist_run):
    import argparse
    from fastcnn.cli import build_parser
    parser = build_parser()
    commands, = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in commands.choices.items():
        if name == "bench":                       # its own parser: fastcnn bench --help
            continue
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, (name, action.dest)
    done = fastcnn_cli("summary", mnist_run[0] / "best.fcnn")
    assert done.returncode == 0 and "61,706" in done.stdout, done.stderr
    done = fastcnn_cli("train", mnist_run[0] / "best.fcnn")
    assert done.returncode == 2 and "not a config (a .json or .yaml text file)" in done.stderr
    done = fastcnn_cli("predict", mnist_run[0] / "best.fcnn", "x.png", "--top", "0")
    assert done.returncode == 2 and "expected a whole number >= 1, got '0'" in done.stderr
