"""``datasets`` data (``--data hf:...``): a local copy of MNIST-5k made with ``datasets`` itself (no network)
trains through ``pmf train`` and its ClassLabel names reach ``pmf sample --classes``; parquet files, unlabelled
splits, ``pmf pack`` and ``pmf refstats`` sources; one-line errors that leave the run folder untouched."""

import contextlib
import io

import numpy as np
import pytest
from PIL import Image

from pmf.checkpoints.load import latest_checkpoint, read_file
from pmf.cli import main
from pmf.data import load_builtin, load_packed, pack_folder
from pmf.data.hf import HFImages, is_hf, parse_spec
from pmf.errors import PMFError

datasets = pytest.importorskip("datasets")
pytestmark = pytest.mark.usefixtures("one_thread")
NAMES = [f"digit{i}" for i in range(10)]


def mnist_dataset(n: int | None = None, **extra):
    """MNIST-5k's train split (its first ``n`` images) as a ``datasets.Dataset``: gray images, ClassLabel names;
    ``extra``: more columns (name -> (feature, values))."""
    data = load_builtin("mnist-5k", split="train")
    n = len(data.labels) if n is None else n
    columns = {"image": [Image.fromarray(im[..., 0], mode="L") for im in data.images[:n]],
               "label": data.labels[:n].tolist()}
    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)}
    for name, (feature, values) in extra.items():
        columns[name], features[name] = values, feature
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


@pytest.fixture(scope="module")
def mnist_disk(tmp_path_factory):
    """MNIST-5k saved with ``save_to_disk`` as a DatasetDict (train: 4,500 images; test: 20)."""
    path = tmp_path_factory.mktemp("hf") / "mnist5k"
    train = mnist_dataset()
    datasets.DatasetDict({"train": train, "test": train.select(range(20))}).save_to_disk(str(path))
    return path


def run_cli(*argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(list(argv))
    return rc, err.getvalue()


def test_pmf_train_on_a_local_datasets_copy_of_mnist_and_sample_by_class_name(mnist_disk, tmp_path):
    run = tmp_path / "run"
    rc, err = run_cli("train", "--recipe", "tiny", "--data", f"hf:{mnist_disk}", "--steps", "2", "--out", str(run),
                      "--sample-every", "0", "--no-progress", "--workers", "0")
    assert rc == 0, err
    assert f"hf:{mnist_disk}: 4,500 images, 10 classes, 28x28, gray" in err
    ckpt = read_file(latest_checkpoint(run / "checkpoints"))
    assert ckpt["class_names"] == NAMES and ckpt["model_config"]["in_channels"] == 1
    rc, err = run_cli("sample", "--checkpoint", str(run), "--out", str(tmp_path / "s"), "--classes", "digit3,digit7",
                      "--per-class", "1", "--no-progress")
    assert rc == 0, err
    assert np.load(tmp_path / "s" / "samples.npz")["labels"].tolist() == [3, 7]
    assert (tmp_path / "s" / "000000_digit3.png").is_file()


def test_split_option_parquet_and_unlabelled_data(mnist_disk, tmp_path):
    test = HFImages(f"hf:{mnist_disk}:split=test", 28, 1)
    assert len(test) == 20 and test.class_names == NAMES
    ds = mnist_dataset(30)
    ds.to_parquet(str(tmp_path / "mnist.parquet"))
    (tmp_path / "folder" / "a").mkdir(parents=True)
    Image.new("L", (4, 4)).save(tmp_path / "folder" / "a" / "x.png")
    assert is_hf(str(tmp_path / "mnist.parquet")) and is_hf(str(tmp_path)) and not is_hf(str(tmp_path / "folder"))
    pq = HFImages(str(tmp_path / "mnist.parquet"), 28, 1)
    assert pq.labels.tolist() == ds["label"] and pq.class_names == NAMES
    image, label = pq[3]
    want = load_builtin("mnist-5k", split="train").images[3]
    assert label == ds["label"][3] and np.array_equal(image.numpy(), want)
    ds.remove_columns("label").save_to_disk(str(tmp_path / "plain"))  # no label column: one class
    plain = HFImages(f"hf:{tmp_path / 'plain'}", 28, 3)
    assert plain.labels.tolist() == [0] * 30 and plain.class_names == ["plain"] and plain[0][0].shape == (28, 28, 3)
    assert HFImages(f"hf:{mnist_disk}:label=none,split=test", 28).class_names == ["mnist5k"]
    assert parse_spec("hf:owner/name:split=test,streaming,image=img").streaming


def test_pack_and_refstats_take_a_datasets_spec(mnist_disk, tmp_path):
    from pmf.data.sources import image_source

    stats = pack_folder(f"hf:{mnist_disk}:split=test", tmp_path / "p", 32, progress=False)
    packed = load_packed(stats["out"])
    assert stats["packed"] == 20 and packed.images.shape == (20, 32, 32, 3) and packed.class_names == NAMES
    src = image_source(f"hf:{mnist_disk}:split=test", 32)
    assert len(src) == 20 and np.array_equal(src[5], packed.images[5])


@pytest.mark.parametrize("case", ["no image column", "two label columns", "missing split", "bad option"])
def test_bad_datasets_are_one_line_and_leave_the_run_folder_alone(tmp_path, case):
    path = tmp_path / "ds"
    spec = f"hf:{path}"
    if case == "no image column":
        datasets.Dataset.from_dict({"x": [1, 2], "label": [0, 1]}).save_to_disk(str(path))
        want = "has no image column (columns: x, label); name it with image=COLUMN"
    elif case == "two label columns":
        mnist_dataset(4, coarse=(datasets.ClassLabel(names=["a", "b"]), [0, 1, 0, 1])).save_to_disk(str(path))
        want = "has 2 candidate label columns (label, coarse); pick one with label=COLUMN"
    elif case == "missing split":
        datasets.DatasetDict({"train": mnist_dataset(4)}).save_to_disk(str(path))
        spec += ":split=validation"
        want = "split 'validation' not found"
    else:
        mnist_dataset(4).save_to_disk(str(path))
        spec += ":colour=red"
        want = "unknown option 'colour=red'"
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("x")
    rc, err = run_cli("train", "--recipe", "tiny", "--data", spec, "--out", str(run), "--overwrite")
    assert rc == 2 and want in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]
    with pytest.raises(PMFError) as info:  # the library says the same
        HFImages(spec, 28)
    assert want in str(info.value)


def test_a_streamed_split_trains_and_resumes_exactly(mnist_disk, tmp_path):
    spec = f"hf:{mnist_disk}:split=test,streaming"
    full, part = tmp_path / "full", tmp_path / "part"
    common = ("train", "--recipe", "tiny", "--data", spec, "--batch-size", "8", "--ckpt-every", "2",
              "--sample-every", "0", "--no-progress", "--log-every", "1")
    rc, err = run_cli(*common, "--steps", "4", "--out", str(full))  # 20 images: the 3rd batch starts epoch 2
    assert rc == 0, err
    assert f"{spec}: " in err and "10 classes, 28x28, gray" in err
    assert run_cli(*common, "--steps", "2", "--out", str(part))[0] == 0
    assert run_cli(*common, "--steps", "4", "--out", str(part), "--resume", "auto")[0] == 0
    rows = [(full / "metrics.jsonl").read_text().splitlines(), (part / "metrics.jsonl").read_text().splitlines()]
    assert [r.split('"img_per_s"')[0] for r in rows[0]] == [r.split('"img_per_s"')[0] for r in rows[1]]
    assert read_file(latest_checkpoint(full / "checkpoints"))["class_names"] == NAMES


def test_a_stream_that_ends_before_the_first_batch_is_one_line(mnist_disk, tmp_path):
    run = tmp_path / "run"
    rc, err = run_cli("train", "--recipe", "tiny", "--data", f"hf:{mnist_disk}:split=test,streaming",
                      "--batch-size", "32", "--out", str(run))
    assert rc == 2 and "ends after 20 images, before the first batch of 32" in err, err
    assert len(err.strip().splitlines()) == 1 and not run.exists()
