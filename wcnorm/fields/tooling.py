"""The mesh tooling of the neural fields, an optional extra: `pip install 'wcnorm[fields]'`.

trimesh (meshes), libigl (winding numbers) and scikit-image (marching cubes) serve the
shape task alone, so the library and the image runs do without them: the modules that
use them import them on first use (`require`), and a field run is refused before it
trains when one is missing (`tooling_problem`, in the checks of a field config).
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from ..errors import WcnormError

EXTRA = "fields"
# module -> the pip package that installs it
PACKAGES = {"trimesh": "trimesh", "igl": "libigl", "skimage": "scikit-image"}


class FieldToolingMissing(WcnormError, ImportError):
    """A package of the `fields` extra is not installed."""


def _message(packages: list[str]) -> str:
    return (f"neural fields need {', '.join(packages)}, not installed here: "
            f"pip install 'wcnorm[{EXTRA}]'")


def missing() -> list[str]:
    """The pip packages of the extra that cannot be imported here."""
    absent = []
    for module, package in PACKAGES.items():
        try:
            import_module(module)
        except ImportError:
            absent.append(package)
    return absent


def tooling_problem() -> str | None:
    """Why a neural field cannot run here (a package of the extra is missing), or None."""
    absent = missing()
    return _message(absent) if absent else None


def require(module: str) -> ModuleType:
    """The module of the extra (`trimesh`, `igl`, `skimage.measure`), or a one-line error
    naming the extra."""
    try:
        return import_module(module)
    except ImportError:
        raise FieldToolingMissing(_message([PACKAGES[module.split(".")[0]]])) from None
