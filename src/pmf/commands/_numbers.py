"""Numbers from the command line: comma-separated lists, guidance intervals ``T_MIN:T_MAX``, and the checks of
the sampling flags before any work starts."""

from __future__ import annotations

from ..errors import PMFError


def numbers(text: str | None, flag: str, *, allow_empty: bool = False, one: bool = False) -> list[float] | None:
    """Comma-separated numbers of ``flag`` (None when not given); an empty list only with ``allow_empty``.
    ``one``: the flag takes a single number, and its message says so."""
    if text is None:
        return None
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        takes = "one number, e.g. 3" if one else "numbers separated by commas"
        raise PMFError(f"{flag} takes {takes}, got {text!r}") from None
    if not values and not allow_empty:
        raise PMFError(f"{flag} is empty")
    return values


def intervals(text: str | None, *, one: bool = False) -> list[tuple[float, float]] | None:
    """``T_MIN:T_MAX`` pairs of --interval, comma-separated (None when not given); ``one``: the flag takes a
    single pair, and its message says so."""
    if text is None:
        return None
    out = []
    for part in str(text).split(","):
        try:
            lo, hi = (float(v) for v in part.split(":"))
        except ValueError:
            takes = ("one T_MIN:T_MAX pair, e.g. '0.1:0.8'" if one else
                     "T_MIN:T_MAX pairs separated by commas, e.g. '0.1:0.8' or '0.1:0.8,0.2:0.7'")
            raise PMFError(f"--interval takes {takes}, got {part!r}") from None
        out.append((lo, hi))
    return out


def one_guidance(args) -> tuple[float | None, float | None, float | None]:
    """(omega, t_min, t_max) given for a single setting (None: from the checkpoint); --interval and the old
    --t-min / --t-max both set the interval."""
    omega = numbers(args.omega, "--omega", one=True)
    if omega is not None and len(omega) != 1:
        raise PMFError(f"--omega takes one number here, got {args.omega!r} (sweeps: pmf eval)")
    pairs = intervals(args.interval, one=True)
    if pairs is not None and len(pairs) != 1:
        raise PMFError(f"--interval takes one T_MIN:T_MAX pair here, got {args.interval!r} (sweeps: pmf eval)")
    t_min, t_max = pairs[0] if pairs else (getattr(args, "t_min", None), getattr(args, "t_max", None))
    return (omega[0] if omega else None), t_min, t_max


def check_sampling_flags(*, omega: float | None = None, t_min: float | None = None,
                         t_max: float | None = None) -> None:
    """The guidance flags, checked before any work starts (None: not given) by the setting's one rule
    (``pmf.sampling_setting.check_guidance``); a field not given takes a value that passes, so only the given
    ones are judged. (``--steps`` is checked by the command's options, ``pmf.commands._options``.)"""
    from ..sampling_setting import SettingError, check_guidance

    lo, hi = 0.0 if t_min is None else t_min, 1.0 if t_max is None else t_max
    try:
        check_guidance(1.0 if omega is None else omega, lo, hi, names={"omega": "--omega"})
    except SettingError as err:
        if err.field == "omega":
            raise
        raise SettingError(err.field, f"--interval T_MIN:T_MAX needs 0 <= T_MIN <= T_MAX <= 1 (e.g. 0.1:0.8), got "
                                      f"{lo:g}:{hi:g}") from None
