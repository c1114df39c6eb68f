"""Runs that can be trusted: identity, locks, argument checks and artifact integrity."""
from cai_jax.run.checks import check_arguments, checked
from cai_jax.run.identity import content_id, fingerprint
from cai_jax.run.integrity import (CorruptArtifactError, check_finite, verify_manifest,
                                   write_manifest)
from cai_jax.run.lock import WorkdirBusyError, WorkdirLock
from cai_jax.run.runner import RunMismatchError, policy, program
