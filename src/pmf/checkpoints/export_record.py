"""The model record (``ModelMetadata``) in the one-weight-set exports of ``export_ema``: a ``.safetensors`` file's
metadata and the ``NAME.sampling.json`` beside a release-format ``NAME.pt`` hold its fields (``to_dict``'s names:
``sampling_setting``, ``class_names``, ``preset``, ``weights``, ``data``), and loading reads them back into the
same record. Exports written before a field was recorded load with the rule's value for it (the shapes'
preset, fp32, no data)."""

from __future__ import annotations

import json

from ..sampling_setting import read_sidecar_file
from .files import FORMAT
from .metadata import RECORD_FIELDS as FIELDS
from .metadata import ModelMetadata


def recorded_fields(meta: ModelMetadata, recorded_names: list[str] | None) -> dict:
    """The record's fields an export writes (JSON values). Class names only where the checkpoint records them:
    otherwise they follow from the preset and data by the rule, and loading resolves the same ones."""
    fields = meta.to_dict()
    if not recorded_names:
        fields.pop("class_names")
    return {k: v for k, v in fields.items() if v is not None}


def safetensors_metadata(config: dict, fields: dict) -> dict[str, str]:
    """A ``.safetensors`` export's metadata (strings only): the model config, the format and each field as JSON."""
    return {"model_config": json.dumps(config), "format": FORMAT, **{k: json.dumps(v) for k, v in fields.items()}}


def read_safetensors_fields(meta: dict[str, str]) -> dict:
    """The record's fields a ``.safetensors`` export's metadata holds (those an older export lacks are left out)."""
    return {k: json.loads(meta[k]) for k in FIELDS if k in meta}


def read_sidecar_fields(spec) -> dict:
    """The record's fields in the ``NAME.sampling.json`` beside a local release-format export (empty without one)."""
    recorded = read_sidecar_file(spec)
    return {k: recorded[k] for k in FIELDS if recorded.get(k) is not None}


def exported_meta(num_classes: int, fields: dict, *, setting, preset: str | None, data: str | None,
                  class_names: list[str] | None) -> ModelMetadata:
    """The record of a loaded export: ``setting`` (its recorded setting, as ``exported_setting`` reads it), and the
    file's preset, data, weights and class names where it records them, else the values given."""
    return ModelMetadata.resolve(num_classes, setting=setting, preset=fields.get("preset") or preset,
                                 data=fields.get("data") or data, recorded=fields.get("class_names") or class_names,
                                 weights=fields.get("weights"))
