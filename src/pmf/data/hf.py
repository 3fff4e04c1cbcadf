"""Image datasets of the ``datasets`` library (pip install 'pixel-meanflow[hf]'): ``hf:OWNER/NAME`` on the Hugging
Face Hub (through its cache), a local parquet file or folder of parquet files, or a ``save_to_disk`` folder,
with options after a colon: ``hf:OWNER/NAME:split=test,image=img,label=fine_label,config=NAME,streaming``.

The image column is the one ``Image`` feature; the label column the one ``ClassLabel`` feature (its names become
the class names, recorded in checkpoints as a folder's are), else an integer column named ``label`` or
``labels``; ``label=none``, or no label column at all, reads the split as one class (an unconditional model).
Images are decoded as folders' are (RGB or gray, ADM center crop). ``streaming`` reads the split as a stream
(``pmf.data.hf_stream``) for sets that do not fit on disk."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import PMFError
from ..extras import needs
from .folder import prepare_image
from .labelled import LabelledImages

PREFIX = "hf:"
LABEL_NAMES = ("label", "labels")  # integer columns read as labels without a ClassLabel feature


@dataclass(frozen=True)
class HFSpec:
    """A parsed ``hf:`` data spec; ``label`` "none" reads the split as one class."""

    source: str
    split: str = "train"
    image: str | None = None
    label: str | None = None
    config: str | None = None
    streaming: bool = False

    @property
    def local(self) -> Path | None:
        path = Path(self.source).expanduser()
        return path if path.exists() else None

    @property
    def name(self) -> str:
        """The dataset's short name: the one class of unlabelled data is named after it."""
        return Path(self.source.rstrip("/")).stem or "images"


def is_local_dataset(path: Path) -> bool:
    """A local path the ``datasets`` library reads: a .parquet file, a folder of them, or a save_to_disk folder."""
    if path.is_file():
        return path.suffix == ".parquet"
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
                              or any(path.glob("*.parquet")))


def is_hf(spec: str) -> bool:
    """Whether a data spec names a ``datasets`` dataset (``hf:...`` or a local parquet / save_to_disk path)."""
    return spec.startswith(PREFIX) or is_local_dataset(Path(spec).expanduser())


def parse_spec(spec: str) -> HFSpec:
    """``hf:SOURCE[:key=value,...]`` (or a bare local path) -> HFSpec; one-line errors for unknown options."""
    body = spec.removeprefix(PREFIX)
    source, _, opts = body.partition(":") if not Path(body).expanduser().exists() else (body, "", "")
    if not source:
        raise PMFError(f"{spec!r}: give a dataset after hf:, e.g. hf:OWNER/NAME or hf:OWNER/NAME:split=test")
    out = HFSpec(source)
    for part in filter(None, (p.strip() for p in opts.split(","))):
        key, sep, value = part.partition("=")
        if key == "streaming" and value in ("", "true", "1", "false", "0"):
            out = replace(out, streaming=value in ("", "true", "1"))
        elif sep and key in ("split", "image", "label", "config") and value:
            out = replace(out, **{key: value})
        else:
            raise PMFError(f"{spec!r}: unknown option {part!r}; options: split=NAME, image=COLUMN, label=COLUMN "
                           "(or label=none), config=NAME, streaming")
    return out


def load_split(hs: HFSpec):
    """The split as a ``datasets.Dataset`` (an ``IterableDataset`` when streaming); a one-line error for a split
    that does not exist or a dataset that cannot be read."""
    with needs("hf", "Hugging Face datasets need the datasets package"):
        import datasets
    local = hs.local
    try:
        if local is not None and not local.is_file() and not any(local.glob("*.parquet")):
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if hs.split not in ds:
                    raise PMFError(f"split {hs.split!r} not found in {hs.source!r}; its splits: {', '.join(ds)}")
                ds = ds[hs.split]
            return ds.to_iterable_dataset() if hs.streaming else ds
        if local is not None:
            files = str(local) if local.is_file() else sorted(str(p) for p in local.glob("*.parquet"))
            return datasets.load_dataset("parquet", data_files={"train": files}, split=hs.split,
                                         streaming=hs.streaming)
        return datasets.load_dataset(hs.source, hs.config, split=hs.split, streaming=hs.streaming)
    except PMFError:
        raise
    except ValueError as err:  # an unknown split, among others
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PMFError(f"cannot read split {hs.split!r} of {hs.source!r}: {first}") from None
    except (FileNotFoundError, OSError, datasets.exceptions.DatasetNotFoundError) as err:
        raise PMFError(f"cannot read the dataset {hs.source!r}: {str(err).strip().splitlines()[0]}") from None


def pick_columns(features, hs: HFSpec) -> tuple[str, str | None, list[str] | None]:
    """(image column, label column or None, class names or None) from the split's features and the options."""
    import datasets

    names = list(features)
    images = [c for c, f in features.items() if isinstance(f, datasets.Image)]
    if hs.image is not None:
        if hs.image not in features:
            raise PMFError(f"{hs.source!r} has no column {hs.image!r} (columns: {', '.join(names)})")
        image = hs.image
    elif len(images) == 1:
        image = images[0]
    else:
        what = "no image column" if not images else f"{len(images)} image columns ({', '.join(images)})"
        raise PMFError(f"{hs.source!r} has {what} (columns: {', '.join(names)}); name it with image=COLUMN")
    if hs.label == "none":
        return image, None, None
    if hs.label is not None:
        if hs.label not in features:
            raise PMFError(f"{hs.source!r} has no column {hs.label!r} (columns: {', '.join(names)})")
        label = hs.label
    else:
        found = [c for c, f in features.items() if isinstance(f, datasets.ClassLabel)] or \
            [c for c in LABEL_NAMES if c in features and str(getattr(features[c], "dtype", "")).startswith("int")]
        if len(found) > 1:
            raise PMFError(f"{hs.source!r} has {len(found)} candidate label columns ({', '.join(found)}); pick one "
                           "with label=COLUMN (or label=none for one class)")
        if not found:
            return image, None, None
        label = found[0]
    feature = features[label]
    return image, label, list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


class HFImages(LabelledImages):
    """A split of a ``datasets`` dataset as training data: ``labels`` int64 [N] and ``class_names`` known up
    front, images decoded on the fly to uint8 [size, size, channels]."""

    def __init__(self, spec: str | HFSpec, size: int, channels: int = 3):
        self.spec = parse_spec(spec) if isinstance(spec, str) else spec
        self.size, self.channels, self.skipped = size, channels, 0
        ds = load_split(self.spec)
        self.image, label, names = pick_columns(ds.features, self.spec)
        if label is None:
            self.labels = np.zeros(len(ds), dtype=np.int64)
            self.class_names = [self.spec.name]
        else:
            self.labels = np.asarray(ds.data.column(label).to_numpy(), dtype=np.int64)
            top = int(self.labels.max()) + 1 if len(self.labels) else 1
            self.class_names = names or [str(i) for i in range(top)]
        self.ds = ds.select_columns([self.image])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        im = self.ds[int(index)][self.image]
        return torch.from_numpy(prepare_image(im, self.size, self.channels)), int(self.labels[index])
