"""Promise 6, *commitment means copies*: which copies an object is owed, which of them count,
and whether they meet the configured policy. Pure functions over settings and catalog facts.

- **Owed**: the primary holds every object from ingest on; every configured replica site
  (``[sites.NAME]``, a PACS included) is owed a copy of every object.
- **Counted**: only a copy in state ``verified`` (read back or checksummed by the site) on
  the primary or on a configured replica that keeps ciphertext. Copies on sites no longer
  configured do not count: nobody is looking after them. Nor do ``dicom://`` targets: a copy
  handed to a PACS (often the very PACS asking for commitment, which may then delete its
  own) is neither kept nor readable back by the archive. The primary counts as on-site.
- **Met**: at least ``[policy] copies`` counted copies, of which at least
  ``[policy] offsite_copies`` are on sites configured ``offsite``.

Storage commitment asks ``CopyPolicy.check`` before it answers success; ingest and the
replication service ask ``owed_sites`` which copies to owe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dicomvault.catalog.db import PRIMARY_SITE as PRIMARY
from dicomvault.config import Settings


def owed_sites(settings: Settings) -> list[str]:
    """Replica sites owed a copy of every object (the primary holds it from ingest on)."""
    return [replica.name for replica in settings.replicas]


def counted_sites(settings: Settings) -> dict[str, bool]:
    """Sites whose verified copies count towards the policy: name -> off-site."""
    return {PRIMARY: False, **{replica.name: replica.offsite for replica in settings.replicas
                               if not replica.is_pacs}}


@dataclass(frozen=True)
class PolicyCheck:
    """Whether an object's verified copies meet the policy, with the counts to say why not."""

    met: bool
    copies: int
    offsite: int


@dataclass(frozen=True)
class CopyPolicy:
    copies: int
    offsite_copies: int
    sites: Mapping[str, bool]  # counted site -> off-site

    @classmethod
    def from_settings(cls, settings: Settings) -> CopyPolicy:
        return cls(settings.policy.copies, settings.policy.offsite_copies, counted_sites(settings))

    def check(self, verified_sites: Iterable[str]) -> PolicyCheck:
        """Judge one object by the sites that hold a verified copy of it."""
        counted = [self.sites[site] for site in set(verified_sites) if site in self.sites]
        total, offsite = len(counted), sum(1 for is_offsite in counted if is_offsite)
        return PolicyCheck(total >= self.copies and offsite >= self.offsite_copies, total, offsite)

    def shortfall(self, check: PolicyCheck) -> str:
        """What is missing, in words, for a failure reason."""
        return (f"{check.copies} of {self.copies} verified copies, "
                f"{check.offsite} of {self.offsite_copies} off-site")
