"""Old home of the privacy audit, kept only as a re-export for `benchmarks/quality.py`, which is
being rewritten by another change this session; once it takes `api.AuditConfig`, delete this file.
The audit lives in `fundus_cli/commands/audit/`."""

from __future__ import annotations

from fundus_cli.commands.audit import AuditConfig, AuditResult, audit_privacy

__all__ = ["AuditConfig", "AuditResult", "audit_privacy"]
