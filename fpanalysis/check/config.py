"""The options of one check, validated once, before anything runs."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..formats import FloatFormat, get_format
from ..linalg import Profile

__all__ = ["DRY_RUN_STARTS", "OPTIMIZERS", "CheckConfig"]

#: Where the dry run starts: the model as given (what real training starts from) or after the
#: fp32 warm-up of the certificate.
DRY_RUN_STARTS = ("initial", "warmed-up")

#: Optimizers the check knows how to simulate.
OPTIMIZERS = ("sgd", "adam", "adamw")


def _positive_int(name: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or int(v) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _finite(name: str, v: Any, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {v!r}") from None
    ok = math.isfinite(x) and (x > lo if lo_open else x >= lo) and (x < hi if hi_open else x <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {v!r}")
    return x


@dataclass(frozen=True)
class CheckConfig:
    """What to check and how: the target format, the training set-up to simulate, and the
    size of each measurement.  Every field is checked when the object is made, so a bad option
    is refused before any model runs.

    Parameters
    ----------
    fmt : str or FloatFormat
        Target format (``"fp16"``; any format of :func:`fpanalysis.formats.get_format`).
    optimizer : {"sgd", "adam", "adamw"}
    lr, eps, momentum, betas
        The optimizer's settings (``eps`` for Adam/AdamW, ``momentum`` for SGD).
    batch_size : int
        Samples per training step.
    steps : int
        fp32 training steps measured by the probes.
    warmup_steps : int
        fp32 training steps before the certificate (0: certify the model as given).
    certify : bool
        Run the agreement certificate (``analyze`` on ``certify_samples`` inputs).
    certify_samples : int
        Inputs the certificate examines.
    profile : str
        Arithmetic profile of the emulated linear algebra (:class:`fpanalysis.linalg.Profile`).
    dry_run_steps : int
        Steps of the shadow low-precision dry run (:mod:`fpanalysis.nn.shadow`), which also
        verifies each proposed fix; 0 skips it (fixes are then proposed unverified).
    dry_run_start : {"initial", "warmed-up"}
        Where the dry run starts: from the model as given, as real training does (default), or
        from the model after the certificate's fp32 warm-up.
    seed : int
        Seed of the batch order and the initialisation of the warm-up.
    model_name : str, optional
        Name shown in the report.
    recipe : str, optional
        With ``fmt="fp8"``: the FP8 scaling recipe of the FP8 / MX check (:mod:`.fp8`):
        ``"delayed"`` (default), ``"current"``, ``"mxfp8"``, ``"nvfp4"`` (and ``"mxfp6"``,
        ``"mxfp4"``); refused for any other ``fmt``.
    history_len, margin : int, optional
        With ``fmt="fp8"``: delayed scaling's amax history length (default 16) and the
        per-tensor recipes' margin (default 0).
    """

    fmt: Any = "fp16"
    optimizer: str = "sgd"
    lr: float = 0.01
    eps: float = 1e-8
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 64
    steps: int = 8
    warmup_steps: int = 200
    certify: bool = True
    certify_samples: int = 256
    profile: str = "fp32-accumulate"
    dry_run_steps: int = 16
    dry_run_start: str = "initial"
    seed: int = 0
    model_name: str | None = None
    recipe: str | None = None
    history_len: int | None = None
    margin: int | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
        set_("fmt", "fp8" if _fp8_options(self, set_) else get_format(self.fmt))
        opt = str(self.optimizer).strip().lower()
        if opt not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid optimizers are: {', '.join(OPTIMIZERS)}")
        set_("optimizer", opt)
        set_("lr", _finite("the learning rate (lr)", self.lr, 0.0, math.inf, lo_open=True, hi_open=True))
        set_("eps", _finite("Adam's eps", self.eps, 0.0, math.inf, lo_open=True, hi_open=True))
        set_("momentum", _finite("momentum", self.momentum, 0.0, 1.0, hi_open=True))
        try:
            b1, b2 = self.betas
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {self.betas!r}") from None
        set_("betas", (_finite("beta1", b1, 0.0, 1.0, hi_open=True), _finite("beta2", b2, 0.0, 1.0, hi_open=True)))
        set_("batch_size", _positive_int("batch_size", self.batch_size))
        set_("steps", _positive_int("steps", self.steps))
        set_("warmup_steps", _positive_int("warmup_steps", self.warmup_steps, minimum=0))
        set_("certify_samples", _positive_int("certify_samples", self.certify_samples))
        set_("dry_run_steps", _positive_int("dry_run_steps", self.dry_run_steps, minimum=0))
        if self.dry_run_start not in DRY_RUN_STARTS:
            raise ValueError(f"unknown dry_run_start {self.dry_run_start!r}; valid: {', '.join(DRY_RUN_STARTS)}")
        set_("profile", Profile.parse(self.profile).value)
        set_("seed", _positive_int("seed", self.seed, minimum=0))
        set_("certify", bool(self.certify))

    @property
    def is_fp8(self) -> bool:
        """Whether this is the FP8 / MX check (``fmt="fp8"``, :mod:`fpanalysis.check.fp8`)."""
        return self.recipe is not None

    @property
    def format(self) -> FloatFormat:
        """The target format (``fmt`` after parsing; E4M3 for the FP8 check)."""
        if self.is_fp8:
            from ..recipes import FP8_ELEMENTS

            return FP8_ELEMENTS["e4m3"]
        return self.fmt  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fmt"] = "fp8" if self.is_fp8 else self.format.name
        return d


def _fp8_options(c: CheckConfig, set_: Any) -> bool:
    """Validate the FP8 options (and fill in their defaults); whether ``fmt`` is ``"fp8"``."""
    fp8 = isinstance(c.fmt, str) and c.fmt.strip().lower() == "fp8"
    if not fp8:
        for name, flag in (("recipe", "--recipe"), ("history_len", "--amax-history"), ("margin", "--fp8-margin")):
            if getattr(c, name) is not None:
                fmt = c.fmt.name if isinstance(c.fmt, FloatFormat) else c.fmt
                raise ValueError(f"{name} ({flag}) is an option of the FP8 check: it needs fmt='fp8' (--format fp8), "
                                 f"got format {fmt!r}")
        return False
    recipes = ("current", "delayed", "mxfp8", "mxfp6", "mxfp4", "nvfp4")  # fpanalysis.nn.fp8.FP8_RECIPES
    recipe = "delayed" if c.recipe is None else str(c.recipe).strip().lower()
    if recipe not in recipes:
        raise ValueError(f"unknown FP8 recipe {c.recipe!r}; valid recipes are: {', '.join(recipes)}")
    set_("recipe", recipe)
    if c.history_len is not None and recipe != "delayed":
        raise ValueError(f"history_len (--amax-history) is an option of the delayed recipe, not of {recipe}")
    set_("history_len", _positive_int("history_len (the amax history length)",
                                      16 if c.history_len is None else c.history_len))
    set_("margin", _positive_int("margin", 0 if c.margin is None else c.margin, minimum=0))
    if c.margin and recipe not in ("current", "delayed"):
        raise ValueError(f"margin applies to the per-tensor recipes (current, delayed), not to {recipe}")
    return True
