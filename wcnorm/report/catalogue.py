"""The papers' qualitative claims, as data: which methods each claim compares, on which
runs, by which metric. ``claims`` judges them on runs.
"""

from __future__ import annotations

from dataclasses import dataclass

# The WC paper labels BN + WC "BN + E" in some figures (E is its symbol for the row
# equilibration matrix); where a claim names BN + E, runs of either name count.
ALIASES = {"bn_e": ("bn_e", "bn_wc")}
ALIAS_NOTE = ("BN + E read as BN + WC (E is the paper's row equilibration matrix): "
              "runs named bn_e and bn_wc pooled")

# metric column -> (label, higher is better)
METRICS = {
    "final_test_acc": ("final test acc %", True),
    "mean_train_loss": ("train loss averaged over epochs", False),
    "final_test_psnr": ("test PSNR (dB)", True),  # the test views rendered at the end
    "final_test_iou": ("final test IoU", True),
    "final_test_chamfer": ("Chamfer distance of the extracted surface", False),
}

_BN_SCHEMES = ("bn", "bn_ws", "bn_wn")
_WEIGHT_NORMS = ("bn_ws", "bn_wn")


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str  # "WC" or "ENorm"
    text: str
    model: str
    dataset: str  # "" = every dataset of the model (a field claim spans Blender and LLFF)
    # `better` beats each of `worse` (at least `min_worse` of them need runs; the others
    # that have runs are compared too)...
    better: str = ""
    worse: tuple[str, ...] = ()
    min_worse: int | None = None
    # ...or, when `order` is given (best first), each method of it beats the next.
    order: tuple[str, ...] = ()
    # A run column (a grid key such as "depth" or "batch_size") whose every level is
    # compared on its own, the claim holding at "every" level or at "most" of them.
    per: str = ""
    at: str = "every"
    # Only runs of this preset count ("" = every run of the model and dataset), for
    # models that other presets train with another recipe.
    experiment: str = ""
    metric: str = "final_test_acc"
    note: str = ""

    def methods(self) -> tuple[str, ...]:
        return self.order or (self.better, *self.worse)


def _resnet_claim(model: str, label: str, dataset: str, ds_label: str) -> Claim:
    return Claim(
        id=f"wc2_{model}_{dataset}", paper="WC",
        text=f"{label} on {ds_label}: BN + WC performs better.",
        model=model, dataset=dataset, better="bn_wc", worse=_BN_SCHEMES, min_worse=1,
        experiment="wc_resnet",
        note="the caption says CIFAR without naming 10 or 100: both are checked; 'better' "
             "read as a higher mean than every other BN scheme that has runs; only runs of "
             "the wc_resnet preset (the ENorm small-batch presets train ResNet-18 with BN "
             "at other batch sizes)")


def _weight_norms_claim(model: str, label: str, dataset: str, ds_label: str, wc: str,
                        per: str = "", experiment: str = "") -> Claim:
    where = " at every depth p" if per == "depth" else ""
    return Claim(
        id=f"wc_vs_weight_norms_{model}_{dataset}", paper="WC",
        text=f"{label} on {ds_label}{where}: BN + WC outperforms existing weight "
             "normalization techniques (BN + WS, BN + WN).",
        model=model, dataset=dataset, better=wc, worse=_WEIGHT_NORMS, min_worse=1, per=per,
        experiment=experiment,
        note="the abstract's claim (made there for neural fields) read on every preset "
             "that runs BN + WC beside BN + WS or BN + WN: a higher mean final accuracy "
             "than each of them that has runs" + ("; at every depth the preset sweeps"
                                                  if per else "")
             + (f"; only runs of the {experiment} preset (a separate study may train the "
                f"same net)" if experiment else ""))


# The abstract's claim on neural fields: "[WC] outperforms existing weight normalization
# techniques", on NeRF and 3D shape modelling. The existing techniques of a field MLP
# (no batch statistics) are WN and WS (methods.md section 5).
_FIELD_WEIGHT_NORMS = ("wn", "ws")
# model -> (claim id part, task, what one run fits = its grid key, preset)
_FIELD_TASKS = {"nerf": ("nerf", "NeRF", "scene", "wc_nerf"),
                "occupancy": ("shape", "3D shape modelling", "shape", "wc_shape")}
_FIELD_NOTES = {
    "final_test_psnr": "; SSIM is tabled, not claimed (the abstract names no metric; PSNR "
                       "is NeRF's headline)",
}


def _field_claim(model: str, metric: str, rivals: tuple[str, ...]) -> Claim:
    """WC beats ``rivals`` (the weight normalizations, or none) on one field metric at
    every scene or shape of the field preset, all of them one Holm family."""
    tag, task, per, preset = _FIELD_TASKS[model]
    what, higher = METRICS[metric]
    lower = "" if higher else " (lower is better)"
    sense = f"{'a higher' if higher else 'a lower'} mean {what}"
    where = (f"at every {per} of the {preset} preset (only its runs), the comparisons of "
             f"all {per}s one Holm family" + _FIELD_NOTES.get(metric, ""))
    if rivals == _FIELD_WEIGHT_NORMS:
        return Claim(
            id=f"wc_vs_weight_norms_{tag}_{metric.split('_')[-1]}", paper="WC",
            text=f"{task}, every {per}: WC outperforms existing weight normalization "
                 f"techniques (WN, WS) in {what}{lower}.",
            model=model, dataset="", better="wc", worse=rivals, min_worse=1, per=per,
            experiment=preset, metric=metric,
            note="the abstract's words ('outperforms existing weight normalization "
                 f"techniques', said of NeRF and 3D shape modelling) read as {sense} of WC "
                 f"than of each of WN and WS that has runs (at least one), {where}; no "
                 "normalization is not a weight normalization technique: the plain MLP is "
                 "a claim of its own")
    return Claim(
        id=f"wc_vs_none_{tag}_{metric.split('_')[-1]}", paper="WC",
        text=f"{task}, every {per}: WC improves on the plain MLP (no normalization) in "
             f"{what}{lower}.",
        model=model, dataset="", better="wc", worse=rivals, per=per, experiment=preset,
        metric=metric,
        note="not in the abstract's words, which set WC against weight normalization "
             "techniques only: our reading of what validating WC on neural fields presumes, "
             f"that WC helps a field MLP at all; {sense} of WC than of the MLP without "
             f"normalization, {where}")


# (dataset, label, preset) of the ENorm small-batch studies on ResNet-18.
_SMALL_BATCH = (("cifar10", "CIFAR-10", "enorm_resnet_small_batch"),
                ("imagenet", "ImageNet", "enorm_resnet_imagenet_small_batch"))
_SMALL_BATCH_NOTE = ("only runs of the {preset} preset (other presets train ResNet-18 with "
                     "another recipe); the paper's batch sizes are unknown: every batch "
                     "size the preset sweeps is checked, as its own comparison")

# The readings of "BN + WC" the wc_variants preset runs side by side (methods.md section 1).
_WC_VARIANTS = (("bn_wc", "row WC with the classifier"),
                ("bn_wc_hidden", "row WC on the hidden layers only (= BN by construction)"),
                ("bn_wc_col", "column WC with the classifier"),
                ("bn_wc_both", "two-sided WC with the classifier"))
_WC_VARIANTS_NOTE = ("only runs of the wc_variants preset; BN + WC read as {what}; no "
                     "default was chosen by these results")


def _variant_claims(norm: str, what: str) -> list[Claim]:
    note = _WC_VARIANTS_NOTE.format(what=what)
    return [Claim(id=f"wc_variants_{norm}_vs_bn", paper="WC",
                  text=f"ResNet-18 on CIFAR-10, BN + WC as {what}: BN + WC performs better than BN.",
                  model="resnet18", dataset="cifar10", better=norm, worse=("bn",),
                  experiment="wc_variants", note=note),
            Claim(id=f"wc_variants_{norm}_vs_weight_norms", paper="WC",
                  text=f"ResNet-18 on CIFAR-10, BN + WC as {what}: BN + WC outperforms the "
                       "weight normalizations (BN + WS, BN + WN).",
                  model="resnet18", dataset="cifar10", better=norm, worse=_WEIGHT_NORMS,
                  min_worse=1, experiment="wc_variants", note=note)]


CLAIMS: list[Claim] = [
    Claim(id="wc1_googlenet_cifar100", paper="WC",
          text="GoogLeNet on CIFAR-100: BN + WC reaches a much higher accuracy than the "
               "other two normalizations tested.",
          model="googlenet", dataset="cifar100", better="bn_wc", worse=_BN_SCHEMES,
          min_worse=2,
          note="which two schemes the figure shows is unknown: checked against those of "
               "BN, BN + WS, BN + WN that have runs (at least two); 'much' is not "
               "quantified, checked as a higher mean"),
    _resnet_claim("resnet18", "ResNet-18", "cifar10", "CIFAR-10"),
    _resnet_claim("resnet18", "ResNet-18", "cifar100", "CIFAR-100"),
    _resnet_claim("resnet50", "ResNet-50", "cifar10", "CIFAR-10"),
    _resnet_claim("resnet50", "ResNet-50", "cifar100", "CIFAR-100"),
    *[Claim(id=f"wc3_googlenet_{ds}_train_loss", paper="WC",
            text=f"GoogLeNet on {lab}, four schemes: BN + E has the fastest-falling "
                 "training loss.",
            model="googlenet", dataset=ds, better="bn_e", worse=_BN_SCHEMES,
            metric="mean_train_loss",
            note="'fastest-falling' read as the lowest training loss averaged over "
                 "epochs (area under the curve)")
      for ds, lab in (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100"))],
    Claim(id="wc4_densenet121_cifar10", paper="WC",
          text="DenseNet on CIFAR-10, four schemes: BN + E reaches higher top-1 than the "
               "other three.",
          model="densenet121", dataset="cifar10", better="bn_e", worse=_BN_SCHEMES),
    # Every model and dataset a preset trains BN + WC on beside BN + WS or BN + WN, under
    # the name its preset gives BN + WC (wc_googlenet and wc_googlenet_c100 both run
    # GoogLeNet on CIFAR-100, as bn_e and bn_wc: the alias pools them).
    _weight_norms_claim("googlenet", "GoogLeNet", "cifar10", "CIFAR-10", "bn_e"),
    _weight_norms_claim("googlenet", "GoogLeNet", "cifar100", "CIFAR-100", "bn_e"),
    _weight_norms_claim("densenet121", "DenseNet", "cifar10", "CIFAR-10", "bn_e"),
    *[_weight_norms_claim(m, lab, ds, ds_lab, "bn_wc")
      for m, lab in (("resnet18", "ResNet-18"), ("resnet50", "ResNet-50"))
      for ds, ds_lab in (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100"))],
    # Two presets train the FC net with BN and BN + WN, as separate studies (their own
    # learning-rate rules, budgets, seeds): an FC claim reads the runs of its own preset.
    _weight_norms_claim("enorm_fc", "ENorm's fully connected net", "cifar10", "CIFAR-10",
                        "bn_wc", per="depth", experiment="wc_fc"),
    *[c for norm, what in _WC_VARIANTS for c in _variant_claims(norm, what)],
    # ViTs: the paper reports them (on ImageNet) with WC on every linear, numbers unknown.
    *[Claim(id=f"wc_vit_{ds}", paper="WC",
            text=f"ViT on {lab}: LN + WC improves on the ViT's LayerNorm alone.",
            model="vit", dataset=ds, better="ln_wc", worse=("ln",), experiment=preset,
            note="not a sentence of the paper, which reports ViTs without numbers known "
                 "here: our reading of what reporting them presumes, that WC on every "
                 "linear but the classifier helps a ViT; a higher mean final test accuracy "
                 f"than LN alone, only runs of the {preset} preset")
      for ds, lab, preset in (("cifar10", "CIFAR-10", "wc_vit"), ("cifar100", "CIFAR-100", "wc_vit"),
                              ("imagenet", "ImageNet", "wc_vit_imagenet"))],
    Claim(id="enorm_fc_order", paper="ENorm",
          text="Fully connected network on CIFAR-10: ENorm + BN > ENorm > BN > Baseline "
               "for most depths p.",
          model="enorm_fc", dataset="cifar10", order=("bn_enorm", "enorm", "bn", "none"),
          per="depth", at="most", experiment="enorm_fc",
          note="'most' read as more than half of the depths whose four cells have runs; "
               "each depth's three adjacent comparisons are one Holm family; only runs of "
               "the enorm_fc preset (wc_fc, a separate study, also trains BN)"),
    Claim(id="enorm_sgd_enorm_fullconv_cifar10", paper="ENorm",
          text="Fully convolutional net on CIFAR-10: interleaving ENorm with SGD improves "
               "test accuracy (ENorm + BN beats BN).",
          model="enorm_fullconv", dataset="cifar10", better="bn_enorm", worse=("bn",),
          note="'improves' read as a higher mean final test accuracy with ENorm cycles "
               "than without them, BN kept in both (the paper's comparison on this net)"),
    *[Claim(id=f"enorm_sgd_resnet18_{ds}", paper="ENorm",
            text=f"ResNet-18 on {lab}: interleaving ENorm with SGD improves test accuracy "
                 "(ENorm + BN beats BN at every batch size).",
            model="resnet18", dataset=ds, better="bn_enorm", worse=("bn",),
            per="batch_size", experiment=preset,
            note="'improves' read as a higher mean final test accuracy of ENorm + BN than "
                 "BN; " + _SMALL_BATCH_NOTE.format(preset=preset))
      for ds, lab, preset in _SMALL_BATCH],
    *[Claim(id=f"enorm_small_batch_resnet18_{ds}", paper="ENorm",
            text=f"ResNet-18 on {lab}: for small batches ENorm is an alternative to batch "
                 "and group normalization.",
            model="resnet18", dataset=ds, better="enorm", worse=("bn", "gn"),
            per="batch_size", experiment=preset,
            note="'an alternative' read in its testable strong sense: ENorm (no activation "
                 "norm) has a higher mean final accuracy than BN and than GN at every "
                 "batch size; the weak sense 'no worse' is refuted only by a "
                 "'contradicted' verdict; the preset's batch sizes read as the small "
                 "ones; " + _SMALL_BATCH_NOTE.format(preset=preset))
      for ds, lab, preset in _SMALL_BATCH],
    # Neural fields: NeRF on test PSNR (its headline; SSIM is tabled, not claimed) per
    # scene, shapes on test IoU and on Chamfer distance per shape.
    *[_field_claim(model, metric, rivals)
      for model, metric in (("nerf", "final_test_psnr"), ("occupancy", "final_test_iou"),
                            ("occupancy", "final_test_chamfer"))
      for rivals in (_FIELD_WEIGHT_NORMS, ("none",))],
]
