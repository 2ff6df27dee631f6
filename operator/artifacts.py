"""The operator's optional look into the artifact store: does a direct `uri` input have a manifest?

By design the operator needs no storage credentials: a stage reports its output URI and digest in
rank 0's termination message, and a stage whose input is missing exits 3 (MissingInput, no retry).
That still costs a gang of pods, scheduled and started, to learn that a URI was mistyped. So an
operator that may read the store (`forgeline operator --check-uri-inputs`, with AWS_* credentials
in its own environment, or a file:// store it can see) checks each direct `uri` input for its
`_MANIFEST.json` before any pod exists, and records the manifest's digest in status.inputs, which
pins the exact artifact the stage will read. It reads the manifest only, never the files.

forgeline.jobs.storage does the reading (fsspec), imported on first use: it needs fsspec and, for
s3://, s3fs in the operator's environment.
"""

from __future__ import annotations

import logging
from typing import Any

from forgeline.operator.policies.inputs import UriCheck

log = logging.getLogger(__name__)


class StoreProbe:
    """A callable uri -> UriCheck over forgeline.jobs.storage (the trainers' own reader)."""

    def __init__(self, endpoint: str | None = None) -> None:
        from forgeline.jobs import storage  # fsspec: only when the check is switched on
        from forgeline.jobs.retry import RetryPolicy

        self._storage_module: Any = storage
        # One try: a reconcile pass never waits on a store that is down; the stage checks again itself.
        self._storage = storage.Storage(endpoint, retry=RetryPolicy(deadline=0))

    def __call__(self, uri: str) -> UriCheck:
        from forgeline.jobs.errors import InputError

        try:
            _, sha = self._storage_module.read_manifest(self._storage, uri)
        except InputError as exc:
            return UriCheck(False, message=str(exc).removeprefix(f"input {uri}: "))
        except Exception as exc:  # no credentials, store unreachable: the stage will check itself
            log.warning("cannot check %s for a manifest (%s); the stage checks it when it starts", uri, exc)
            return UriCheck(None, message=str(exc))
        return UriCheck(True, digest=f"sha256:{sha}")
