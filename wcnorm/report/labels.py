"""How the report names methods: column and legend labels, the variant of WC and of
ENorm a run used, and whether a method is, by construction, its normalization alone."""

from __future__ import annotations

import pandas as pd

NORM_LABELS = {
    "none": "Baseline", "bn": "BN", "bn_ws": "BN + WS", "bn_wn": "BN + WN",
    "bn_wc": "BN + WC", "bn_e": "BN + E", "bn_wc_col": "BN + WC (columns)",
    "bn_wc_both": "BN + WC (both sides)", "bn_wc_hidden": "BN + WC, classifier skipped", "gn": "GN", "gn_wc": "GN + WC", "ln": "LN",
    "ln_wc": "LN + WC", "ws": "WS", "wn": "WN", "wc": "WC", "enorm": "ENorm",
    "bn_enorm": "ENorm + BN",
}
# Column order of the tables: known norms in this order, unknown ones after, sorted.
NORM_ORDER = list(NORM_LABELS)

# The ENorm settings that change what a run computes (methods.md section 2): every table
# names them, so that a run of the official code's cycle is never read as one of the
# project's default cycle, nor the other way round.
ENORM_SETTINGS = ("order", "balance_last", "c", "cycles", "every")
ENORM_CYCLES = {("jacobi", False): "official code", ("sequential", True): "wcnorm default"}


ACT_LABELS = {"bn": "BN", "gn": "GN", "ln": "LN", "none": "no normalization"}


def norm_label(norm, runs: pd.DataFrame | None = None) -> str:
    """A norm's column or legend label. Given its ``runs``, a method that every finished
    run recorded as cancelled on all its layers is labelled with what it is, e.g.
    "BN + WC, classifier skipped (= BN)"."""
    label = NORM_LABELS.get(norm, str(norm))
    same = equal_to(runs[runs["norm"] == norm]) if runs is not None else None
    return f"{label} (= {same})" if same else label


def equal_to(runs: pd.DataFrame) -> str | None:
    """The activation normalization that finished ``runs`` are, by construction, where
    each recorded its weight method as cancelled on every layer (``runs.method_scope``)."""
    if "wm_cancelled" not in runs.columns:
        return None
    done = runs[runs["finished"]] if "finished" in runs.columns else runs
    # as floats: a run without the record (NaN) then compares False, never "unknown"
    cancelled = pd.to_numeric(done["wm_cancelled"], errors="coerce").astype(float)
    layers = pd.to_numeric(done["wm_layers"], errors="coerce").astype(float)
    acts = set(done.get("cfg.norm.act", pd.Series(dtype=object)).dropna())
    if not len(done) or len(acts) != 1 or not ((cancelled > 0) & (cancelled == layers)).all():
        return None
    return ACT_LABELS.get(acts.pop(), "its normalization")


def weight_variant(run: dict) -> str | None:
    """The WC or WN a run used, e.g. "wc side=row, p=2, classifier included"; None for a
    run without one. WC's side, p and scope change what it computes (a BatchNorm cancels
    row WC on every layer it follows, so the scope decides whether it acts at all)."""
    weight = run.get("cfg.norm.weight")
    if weight not in ("wc", "wn"):
        return None
    parts = [f"side={_setting(run.get('cfg.norm.wc.side'))}", f"p={_setting(run.get('cfg.norm.wc.p'))}"] \
        if weight == "wc" else []
    included = _setting(run.get(f"cfg.norm.{weight}.include_classifier")) == "true"
    parts.append(f"classifier {'included' if included else 'skipped'}")
    cancelled, layers = run.get("wm_cancelled"), run.get("wm_layers")
    if pd.notna(cancelled) and pd.notna(layers) and 0 < cancelled == layers:
        parts.append("cancelled on every layer")
    return f"{weight} " + ", ".join(parts)


def _setting(value) -> str:
    """A config value as the config writes it (true, 1.2, jacobi); "?" where absent."""
    if isinstance(value, str):
        return value
    if value is None or pd.isna(value):
        return "?"
    if pd.api.types.is_bool(value):
        return str(bool(value)).lower()
    return f"{value:g}" if pd.api.types.is_number(value) else str(value)


def enorm_variant(run: dict) -> str | None:
    """The ENorm a run used, e.g. "order=jacobi, balance_last=false, c=1.2, cycles=1,
    every=1 (official code)"; None for a run without ENorm."""
    if _setting(run.get("cfg.norm.enorm.enabled")) != "true":
        return None
    settings = {k: _setting(run.get(f"cfg.norm.enorm.{k}")) for k in ENORM_SETTINGS}
    text = ", ".join(f"{k}={v}" for k, v in settings.items())
    cycle = ENORM_CYCLES.get((settings["order"], settings["balance_last"] == "true"))
    return f"{text} ({cycle})" if cycle else text


def norm_sort_key(norm):
    return (NORM_ORDER.index(norm), "") if norm in NORM_ORDER else (len(NORM_ORDER), str(norm))
