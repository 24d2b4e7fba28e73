"""Which studies a restore drill takes from a site: the newest, a study of each date asked
for, and a few at random.

A study is drilled from a site only when the catalog says that site holds a verified copy
of every instance's latest version: the drill proves that what the catalog counts as a copy
can really be restored, not that replication is current (the backlog and its age are in
``status``). So the newest study still being copied off-site is passed over for the newest
one that is complete there, and a note says so. A date the operator asked for is different:
if the archive has studies of that date but none of them is complete on the site, that is a
failure of the drill, because exactly that recovery was asked for and is not possible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dicomvault.catalog import drills
from dicomvault.catalog.retrieval import RetrievalItem, retrieval_items

if TYPE_CHECKING:
    from dicomvault.catalog import Catalog

CANDIDATES = 25  # studies looked at for one pick before giving up on it


@dataclass
class Pick:
    """One study to restore from a site and why it was chosen (random, newest, date:YYYYMMDD)."""

    study_uid: str
    study_date: str
    why: list[str]
    items: list[RetrievalItem] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"study_uid": self.study_uid, "study_date": self.study_date, "why": self.why,
                "instances": len(self.items), "bytes": sum(i.size_original for i in self.items)}


@dataclass
class Plan:
    """What one site's drill restores, what could not be picked (``failures``: object, problem)
    and what is worth knowing but no failure (``notes``)."""

    site: str
    picks: list[Pick] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def instances(self) -> int:
        return sum(len(p.items) for p in self.picks)


def studies_dated(catalog: "Catalog", date: str) -> int:
    """How many studies of the archive carry this Study Date."""
    return drills.count_studies_dated(catalog, date)


def has_studies(catalog: "Catalog") -> bool:
    return drills.has_studies(catalog)


def plan_site(catalog: "Catalog", site: str, random_count: int, dates: list[str]) -> Plan:
    """The newest complete study, one per date, then ``random_count`` others at random."""
    plan = Plan(site)
    chosen: dict[str, Pick] = {}

    def take(candidates: list[tuple[str, str]], why: str) -> bool:
        for study_uid, study_date in candidates:
            if study_uid in chosen:
                chosen[study_uid].why.append(why)
                return True
            items = _complete_on_site(catalog, site, study_uid)
            if items:
                chosen[study_uid] = Pick(study_uid, study_date, [why], items)
                return True
        return False

    newest = drills.newest_studies(catalog, CANDIDATES)
    if newest and not take(newest, "newest"):
        plan.notes.append(f"none of the {len(newest)} newest studies has every copy on site {site} yet "
                          "(replication backlog: `dicomvault sites status`)")
    for date in dates:
        dated = drills.newest_studies(catalog, CANDIDATES, date=date)
        if not take(dated, f"date:{date}"):
            plan.failures.append({"object": f"date {date}", "problem": (
                f"{len(dated)} stud{'y' if len(dated) == 1 else 'ies'} dated {date} in the archive, but none with "
                f"a verified copy of every instance on site {site}: a recovery of that date from {site} is not "
                f"possible now (see `dicomvault sites status` and `dicomvault verify --site {site}`)")})
    wanted = len(chosen) + random_count
    for candidate in drills.random_studies(catalog, 4 * random_count + CANDIDATES) if random_count else []:
        if len(chosen) >= wanted:
            break
        if candidate[0] not in chosen:
            take([candidate], "random")
    if len(chosen) < wanted:
        plan.notes.append(f"{len(chosen) - (wanted - random_count)} random studies instead of {random_count}: no "
                          f"other study looked at has every copy on site {site}")
    plan.picks = list(chosen.values())
    return plan


def _complete_on_site(catalog: "Catalog", site: str, study_uid: str) -> list[RetrievalItem] | None:
    """The study's latest versions when ``site`` holds a verified copy of each one, else None."""
    items = retrieval_items(catalog, "STUDY", [study_uid])
    if not items:
        return None
    wanted = [item.object_id for item in items]
    return items if drills.verified_on_site(catalog, site, wanted).issuperset(wanted) else None
