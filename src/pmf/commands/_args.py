"""Shared argument helpers of the ``pmf`` commands, by concern: ``_vocabulary`` (one flag per concept, the
parser), ``_numbers`` (number lists, intervals, the guidance checks), ``_deprecation`` (old spellings),
``_loading`` (device and sampler of ``--checkpoint``), ``_options`` (the typed options of the commands),
``_config_flags`` (flags generated from a config or options dataclass), ``_runs`` (training run folders). The
names stay importable from here."""

from ._deprecation import DEPRECATED, _Deprecated, deprecated, legacy_positionals
from ._loading import (
    add_arch,
    add_common_model_args,
    check_device,
    checkpoint_arg,
    load_for_sampling,
    load_sampler_arg,
    sampler_options,
)
from ._numbers import check_sampling_flags, intervals, numbers, one_guidance
from ._vocabulary import (
    CONCEPTS,
    DEVICE_HELP,
    PMFArgumentParser,
    add_batch_size,
    add_checkpoint,
    add_device,
    add_ema,
    add_guidance,
    add_num_images,
    add_out,
    add_progress,
    add_seed,
    add_workers,
    output_file,
    output_folder,
)

__all__ = ["CONCEPTS", "DEPRECATED", "DEVICE_HELP", "PMFArgumentParser", "_Deprecated", "add_arch",
           "add_batch_size",
           "add_checkpoint", "add_common_model_args", "add_device", "add_ema", "add_guidance", "add_num_images",
           "add_out", "add_progress", "add_seed", "add_workers", "check_device", "check_sampling_flags",
           "checkpoint_arg", "deprecated", "intervals", "legacy_positionals", "load_for_sampling", "load_sampler_arg",
           "numbers", "one_guidance", "output_file", "output_folder", "sampler_options"]
