"""``estafeta backup prune``: forget old snapshots, delete what nothing needs.

Which snapshots stay (``keep``): the newest one always; then, going from
new to old, the newest snapshot of each of the last ``daily`` days that
have one, of the last ``weekly`` ISO weeks and of the last ``monthly``
months (UTC), as restic's and borg's ``--keep-*`` do.

Then, under the ``prune`` lock (which no ``create`` holds at the same time,
``estafeta.backup.repository``), mark and sweep:

1. the manifests of forgotten snapshots are deleted;
2. *mark*: every object the kept snapshots need (each scope's tree, and
   the objects the tree names). A scope whose subkey was destroyed cannot
   be read, so its objects are not marked: erased data is swept too;
3. packs in which more than REPACK_WASTE of the octets are unneeded are
   rewritten with the needed objects only (new packs, uploaded first);
4. one new index listing every needed object is written, then the old
   indexes are deleted, then the packs nothing lists (including those a
   killed ``create`` left behind).

A crash at any step leaves every kept snapshot readable: an object is
always listed by some index whose pack exists, because indexes go before
the packs they list and after the packs they replace.
"""

from __future__ import annotations

import datetime
import logging
from collections import defaultdict
from dataclasses import dataclass, field

from estafeta.backup.objects import BackupError, KeyDestroyed
from estafeta.backup.repository import Location, Packer, Repository, snapshot_name
from estafeta.backup.restore import Reader

log = logging.getLogger("estafeta.backup")

REPACK_WASTE = 0.25


@dataclass
class PruneReport:
    kept: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    packs_deleted: int = 0
    packs_repacked: int = 0
    octets_freed: int = 0
    objects_kept: int = 0
    erased_scopes: int = 0


def _when(name: str) -> datetime.datetime:
    try:
        return datetime.datetime.strptime(name[:17], "%Y-%m-%dT%H%M%S").replace(tzinfo=datetime.UTC)
    except ValueError:
        raise BackupError(f"snapshot {name}: not a snapshot name") from None


def keep(names: list[str], daily: int, weekly: int, monthly: int) -> list[str]:
    """The snapshots a ``--keep-daily/weekly/monthly`` policy keeps."""
    ordered = sorted(names, reverse=True)
    kept: set[str] = set(ordered[:1])
    for count, period in (
        (daily, lambda t: t.strftime("%Y-%m-%d")),
        (weekly, lambda t: "{}-W{:02d}".format(*t.isocalendar()[:2])),
        (monthly, lambda t: t.strftime("%Y-%m")),
    ):
        seen: list[str] = []
        for name in ordered:
            bucket = period(_when(name))
            if bucket in seen:
                continue
            if len(seen) >= count:
                break
            seen.append(bucket)
            kept.add(name)
    return sorted(kept)


def prune(
    repository: Repository, daily: int, weekly: int, monthly: int, dry_run: bool = False
) -> PruneReport:
    report = PruneReport()
    with repository.lock("prune"):
        names = repository.snapshots()
        report.kept = keep(names, daily, weekly, monthly)
        report.forgotten = [name for name in names if name not in report.kept]
        if dry_run:
            return report
        for name in report.forgotten:
            repository.destination.delete(f"snapshots/{name}")
        _sweep(repository, report)
    log.info(
        "backup: prune kept %d snapshots, forgot %d; %d packs deleted, %d rewritten, %.1f MB freed",
        len(report.kept),
        len(report.forgotten),
        report.packs_deleted,
        report.packs_repacked,
        report.octets_freed / 1e6,
    )
    return report


def _sweep(repository: Repository, report: PruneReport) -> None:
    needed: set[str] = set()
    for name in report.kept:
        reader = Reader(repository, name)
        for scope, entry in reader.scopes.items():
            try:
                tree = reader.tree(scope)
            except KeyDestroyed:
                report.erased_scopes += 1
                continue
            needed.update(str(i) for i in entry.get("tree", []) or [])  # type: ignore[attr-defined]
            for item in tree.files:
                needed.update(item.chunks)
    index = repository.index()
    missing = needed - index.keys()
    if missing:
        raise BackupError(
            f"{repository.destination.describe()}: {len(missing)} objects of kept snapshots are "
            f"in no index (e.g. {next(iter(missing))}); run 'estafeta backup verify'. "
            "Nothing was deleted"
        )
    by_pack: dict[str, list[tuple[str, Location]]] = defaultdict(list)
    for name, where in index.items():
        by_pack[where.pack].append((name, where))
    stored = repository.pack_names()
    keep_index: dict[str, Location] = {}
    packer = Packer(repository, use_index=False)
    doomed: set[str] = set(stored - by_pack.keys())  # packs no index lists
    try:
        for pack, entries in by_pack.items():
            total = sum(where.length for _, where in entries)
            used = [(name, where) for name, where in entries if name in needed]
            used_octets = sum(where.length for _, where in used)
            if not used:
                doomed.add(pack)
            elif total - used_octets > REPACK_WASTE * total:
                data = repository.read_pack(pack)
                for name, where in used:
                    packer.add(name, data[where.offset : where.offset + where.length])
                doomed.add(pack)
                report.packs_repacked += 1
            else:
                keep_index.update(used)
        packer.finish(write_index=False)
    except BaseException:
        packer.abort()
        raise
    keep_index.update(packer.added)
    report.objects_kept = len(keep_index)
    old_indexes = list(repository.destination.list("index"))
    if doomed or len(old_indexes) > 1 or len(keep_index) != len(index):
        packs = sorted({where.pack for where in keep_index.values()})
        numbers = {pack: number for number, pack in enumerate(packs)}
        entries_out = [
            [name, numbers[where.pack], where.offset, where.length]
            for name, where in keep_index.items()
        ]
        new_key = f"index/{snapshot_name()}"
        repository.put_json(new_key, {"packs": packs, "objects": entries_out})
        for key in old_indexes:
            if key != new_key:
                repository.destination.delete(key)
    sizes = {pack: sum(where.length for _, where in entries) for pack, entries in by_pack.items()}
    for pack in sorted(doomed):
        repository.delete_pack(pack)
        report.packs_deleted += 1
        report.octets_freed += sizes.get(pack, 0)
    repository._index = dict(keep_index)
