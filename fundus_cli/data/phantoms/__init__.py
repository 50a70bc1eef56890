"""Procedural fundus photographs: the built-in demo and test data.

Every image is rendered from a `PhantomSpec` (numpy + OpenCV only), so a seed fully
determines the data set and tests can re-render any image bit for bit. The labels file
carries the true field-of-view circle, which is the ground truth for the FOV detector.

Geometry is worked out in "canonical" coordinates: origin at the FOV centre, unit = FOV
radius, x to the right, y down, laid out as a LEFT eye (optic disc on the image's left,
as in a standard left-eye photograph). A right eye is the same picture mirrored in x.

    plan.py      who the patients are      render.py    one photograph from its spec
    vessels.py   the vessel tree           lesions.py   DR and AMD lesions
    write.py     the folder and labels.csv
"""

from __future__ import annotations

from fundus_cli.data.phantoms.plan import CLASS_NAMES, PhantomSpec, plan_phantoms
from fundus_cli.data.phantoms.render import render_phantom
from fundus_cli.data.phantoms.write import PhantomResult, write_phantoms

__all__ = ["CLASS_NAMES", "PhantomResult", "PhantomSpec", "plan_phantoms", "render_phantom", "write_phantoms"]
