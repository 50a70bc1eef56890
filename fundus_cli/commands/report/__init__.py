"""`fundus report`: one self-contained HTML page for a project, a demo or a single artefact folder.

The page is for a clinician collaborator: it opens in any browser without a network or
JavaScript (images are base64 PNG data URIs, the CSS is inline) and puts together what the
other commands wrote: real vs synthetic images per class, the realism and usefulness tables,
the fundus statistics, the privacy verdict with its evidence, and the provenance of every
artefact (fingerprints, versions, settings, training steps and time).

Every number on the page is read from the report files, datasets and run folders; nothing is
recomputed except the image grids, which are drawn from the dataset files. Everything read
from a file is untrusted text: it is HTML-escaped, and only files that start with the PNG
signature are embedded as images.

    project.py   what is in the folder    sections.py  the sections of the page
    privacy.py   the privacy evidence     html.py      escaping, formats, tables, images
    page.py      the page and write_report
"""

from __future__ import annotations

from fundus_cli.commands.report.page import ReportResult, write_report


__all__ = ["ReportResult", "write_report"]
