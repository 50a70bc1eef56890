"""`fundus ingest`: a folder of photographs -> train.h5, holdout.h5 and ingest-report.json.

Two passes. Pass 1 decodes, finds the field of view, crops, measures and hashes every
photograph on all cores and stages the results in small shard files under
`<out>/.ingest-staging/`; each shard is committed atomically, so an interrupted ingest
picks up where it stopped. Pass 2 applies labels, patients, quality limits and duplicate
groups, splits by patient and streams the images into the two final files.

    config.py      IngestConfig, IngestResult, their checks   run.py        ingest, its steps
    stage.py       pass 1: decode into resumable shards       patients.py   labels, patients, pseudonyms
    duplicates.py  copies of one photograph, --duplicates     write.py      the files ingest writes
"""

from __future__ import annotations

from fundus_cli.commands.ingest.config import IngestConfig, IngestResult
from fundus_cli.commands.ingest.run import ingest

__all__ = ["IngestConfig", "IngestResult", "ingest"]
