"""The direct Redis key build's check against Feast's, remembered per Feast version.

:class:`~core.store.state_store.StateLayout` builds Feast's Redis key of a user
without a proto, and uses that build only once it has compared it with Feast's own
function (which means importing Feast: over a second, most of a stream worker's
start before its first write). The verdict depends only on the installed Feast
release and the layout's project and serialization version, so it is kept in a
small JSON file and a later process with the same three skips the import.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from core.store.state_store import StateLayout

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

# The verdicts' file, beside the Feast registry (in the data directory).
VERDICTS = "key_checks.json"


def verdicts_beside_registry(store: FeatureStore) -> Path:
    """Where the verdicts of ``store``'s repo are kept: beside its registry file."""
    return Path(store.config.registry.path).parent / VERDICTS


def _feast_release() -> str | None:
    try:
        return version("feast")
    except PackageNotFoundError:
        return None


def record_key_check(store: FeatureStore) -> StateLayout:
    """Check ``store``'s layout now (Feast is loaded here anyway) and record it,
    so that the stream workers started later need not import Feast."""
    layout = StateLayout.of(store)
    bare = replace(layout, direct_key=None)
    return checked_layout(bare, verdicts_beside_registry(store), layout.direct_key)


def checked_layout(
    layout: StateLayout, verdicts: Path, known_verdict: bool | None = None
) -> StateLayout:
    """``layout`` with ``direct_key`` decided: from ``verdicts`` if it holds the
    verdict for this Feast release, else ``known_verdict`` or a comparison with
    Feast (then recorded).

    An unreadable or unwritable file only costs the import: the check is made.
    """
    if layout.direct_key is not None:
        return layout
    release = _feast_release()
    entry = f"feast {release}, v{layout.serialization_version}, {layout.project}"
    try:
        known = json.loads(verdicts.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    agrees = known.get(entry) if release is not None else None
    if isinstance(agrees, bool):
        return replace(layout, direct_key=agrees)
    agrees = layout.direct_key_agrees() if known_verdict is None else known_verdict
    if release is not None:
        try:
            verdicts.parent.mkdir(parents=True, exist_ok=True)
            partial = verdicts.with_name(f"{verdicts.name}.{os.getpid()}.tmp")
            partial.write_text(json.dumps({**known, entry: agrees}, indent=1))
            partial.replace(verdicts)  # atomic: a reader never sees half a file
        except OSError as exc:
            log.info("could not record the key check in %s: %s", verdicts, exc)
    return replace(layout, direct_key=agrees)
