"""Train/dev/test assignment over every interview of a run, across sites, at the subject level.

Runs once on the driver over the inputs of *all* sources, after discovery and before loading, because a
split is a property of the whole dataset: a subject must never sit in two splits, and a leave-one-site-out
evaluation needs to see every site at once.

Rules, in order:

1. A corpus's own split (E-DAIC / DAIC-WOZ split files, a ``split`` column) is kept; names are normalised
   (``val`` / ``validation`` / ``development`` -> ``dev``).
2. Interviews without one get a deterministic subject-level split: a hash of
   ``(config.corpus.split_seed, site, subject_id)`` mapped onto ``config.corpus.split_fractions``. The same
   subject always lands in the same split, whatever else is in the run, and no subject is in two splits.
3. With ``config.corpus.leave_site_out = SITE``, every interview of SITE becomes ``test``; the other sites keep
   their own ``train`` / ``dev`` and the rest (no split, or their own ``test``) are hashed into train/dev with
   the train:dev ratio of ``split_fractions``.

Interview ids are namespaced by site: ``(site, interview_id)`` must be unique (a clash stops the run before
any work: it is the store's key), and subjects are site-scoped too (subject ``P1`` at two hospitals is two
people). Inputs with an unknown split name or a subject in two splits get ``problem`` set, so they become
error rows with a reason instead of vanishing.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from mllm_dr.config import PreprocessConfig
from mllm_dr.data.sources import InterviewInput
from mllm_dr.errors import UserError

SPLITS = ("train", "dev", "test")
_ALIASES = {"train": "train", "training": "train", "dev": "dev", "val": "dev", "valid": "dev",
            "validation": "dev", "development": "dev", "test": "test", "testing": "test"}


def normalize_split(value: str | None) -> str | None:
    """``"Validation"`` -> ``"dev"``; blank -> ``None``; anything else unknown raises :class:`UserError`."""
    if value is None or not str(value).strip():
        return None
    try:
        return _ALIASES[str(value).strip().lower()]
    except KeyError:
        raise UserError(f"unknown split {value!r} (use train, dev or test)") from None


def assign_splits(inputs: list[InterviewInput], config: PreprocessConfig) -> list[InterviewInput]:
    """Give every input its split (in place; returns ``inputs``). See the module docstring for the rules."""
    fractions = _check_fractions(config.corpus.split_fractions)
    held_out = config.corpus.leave_site_out
    if held_out is not None and held_out not in {item.site for item in inputs}:
        sites = ", ".join(sorted({item.site for item in inputs})) or "none"
        raise UserError(f"corpus.leave_site_out={held_out!r} is not a site of this run (sites: {sites})")
    _check_unique(inputs)

    subjects: dict[tuple[str, str], list[InterviewInput]] = defaultdict(list)
    for item in inputs:
        try:
            item.split = normalize_split(item.split)
        except UserError as exc:
            item.problem = item.problem or str(exc)
            item.split = None
        subjects[(item.site, item.subject_id or item.interview_id)].append(item)

    for (site, subject), items in subjects.items():
        given = {item.split for item in items if item.split is not None}
        if len(given) > 1:
            reason = f"subject {subject!r} of site {site!r} is in more than one split ({', '.join(sorted(given))})"
            for item in items:
                item.problem = item.problem or reason
            split = None
        elif held_out is not None:
            split = "test" if site == held_out else _train_or_dev(given, site, subject, config.corpus.split_seed,
                                                                   fractions)
        else:
            split = given.pop() if given else _hashed_split(site, subject, config.corpus.split_seed, fractions)
        for item in items:
            item.split = split
    return inputs


def _train_or_dev(given: set[str], site: str, subject: str, seed: int,
                  fractions: tuple[float, float, float]) -> str:
    if given & {"train", "dev"}:
        return next(iter(given))
    train, dev, _ = fractions
    if train + dev <= 0:
        raise UserError("corpus.leave_site_out needs train or dev fractions above 0 in corpus.split_fractions")
    return _hashed_split(site, subject, seed, (train / (train + dev), dev / (train + dev), 0.0))


def _hashed_split(site: str, subject: str, seed: int, fractions: tuple[float, float, float]) -> str:
    """A uniform number in [0, 1) from the subject's identity, cut at the cumulative fractions."""
    digest = hashlib.sha256(f"{seed}\0{site}\0{subject}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for name, fraction in zip(SPLITS, fractions):
        edge += fraction
        if point < edge:
            return name
    return next(name for name, fraction in reversed(list(zip(SPLITS, fractions))) if fraction > 0)


def _check_fractions(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise UserError(f"corpus.split_fractions must be three non-negative numbers summing to 1, got {fractions}")
    return fractions


def _check_unique(inputs: list[InterviewInput]) -> None:
    """``site/interview_id`` is the store's key: two inputs with one key would make two rows that claim to be
    the same interview, so the run stops before any work, naming the clash."""
    first: dict[str, InterviewInput] = {}
    clashes = []
    for item in inputs:
        if item.key in first:
            clashes.append(f"{item.key} ({first[item.key].source_uri} and {item.source_uri})")
        else:
            first[item.key] = item
    if clashes:
        more = f" and {len(clashes) - 1} more" if len(clashes) > 1 else ""
        raise UserError(f"interview ids must be unique within a site: {clashes[0]}{more}; "
                        "give each --source its own SITE= name, or fix the duplicate ids")
