"""`fundus audit-privacy`: do the synthetic images copy training patients' images more than chance?

The calibrated nearest-neighbour audit of AUDIT.md, put together from ``privacy/``:
every image is prepared inside one common field-of-view disc (``preprocess``), embedded
(``embeddings``: masked pixels, their 4 x 4 tiled variant; ``learned``: an encoder trained on
the training set only), compared with the training set under flips (``neighbours.nearest`` over
``knn``), calibrated on holdout-to-training distances (``stats.audit_embedding``) and
judged (``decision.decide``): PASS / WARN (exit 0), FAIL (exit 1), INCONCLUSIVE (exit 3,
no holdout and not accepted).

The fourth "embedding", ``registered`` (``register``), finds copies moved by up to
``max_shift`` px, which all the others miss beyond a few pixels: each synthetic and each
calibration image re-ranks a few candidate training images (the pixel and learned
embeddings' nearest, and the learned nearest of eight shifted views of the image) by the
pixel distance minimised over shifts and flips, and gets its p-value and ratio from those
distances. A registered flag whose fine detail matches the training image at the found
shift counts as a confirmed copy, as a confirmed perceptual-hash match does.

Memory does not grow with the training set. Its images are read ``chunk`` at a time:
one pass for the common mask, one for the encoder's (capped) training sample, and one
that prepares every image once and spills the prepared pixels and learned features to a
scratch folder inside ``out``, which the statistics then stream from on each of their
passes. What is held in memory is proportional to the synthetic set and the holdout
(capped at ``max_holdout``): they are the queries of every search.

Writes ``report.json`` (byte-identical for the same inputs, settings and seed: no times,
sorted keys, floats rounded to 6 significant digits), ``flagged.csv``, ``nearest-pairs.png``
and ``distances.png``, each atomically. "Same" includes the device and torch's thread count:
the learned encoder's weights (and their hash in the report) depend on the order of
floating-point sums, which those change.

    config.py      AuditConfig, AuditResult, the checks      run.py       audit_privacy, its steps
    embed.py       images prepared and embedded once         registered.py  confirmed matches
    record.py      report.json and flagged.csv               pairs.py     the data of nearest-pairs.png
"""

from __future__ import annotations

from fundus_cli.commands.audit.config import EMBEDDINGS, AuditConfig, AuditResult, parse_embeddings
from fundus_cli.commands.audit.record import dumps_report
from fundus_cli.commands.audit.run import audit_privacy

__all__ = ["EMBEDDINGS", "AuditConfig", "AuditResult", "audit_privacy", "dumps_report", "parse_embeddings"]
