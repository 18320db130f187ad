"""How a function's inputs are run: its timeout and retry policy, its input concurrency and batching.

    policy = ExecutionPolicy.of(definition)
    policy.delay_before(1)          # seconds before the first retry
    policy.capacity                 # inputs one container takes at once (concurrency x batch size)

Retries happen on the server side (the emulator answers FunctionMap with `sync_client_retries_enabled=False`
unless told otherwise), as Modal does for clients that do not retry themselves: a failure or a timeout is
retried after the policy's delay; a cancellation is final.
"""

from __future__ import annotations

from dataclasses import dataclass

from modal_proto import api_pb2


@dataclass(frozen=True)
class ExecutionPolicy:
    """Timeout, retry policy, input concurrency and batching of one function."""

    timeout_secs: float | None
    retries: int = 0
    initial_delay_ms: int = 1000
    backoff_coefficient: float = 2.0
    max_delay_ms: int = 60_000
    max_concurrent_inputs: int = 1
    target_concurrent_inputs: int = 1
    batch_max_size: int = 0

    @classmethod
    def of(cls, definition: api_pb2.Function) -> ExecutionPolicy:
        """The policy a function was created with."""
        retry = definition.retry_policy
        max_inputs = definition.max_concurrent_inputs or 1
        return cls(
            timeout_secs=definition.timeout_secs or None,
            retries=retry.retries,
            initial_delay_ms=retry.initial_delay_ms,
            backoff_coefficient=retry.backoff_coefficient or 1.0,
            max_delay_ms=retry.max_delay_ms or 60_000,
            max_concurrent_inputs=max_inputs,
            target_concurrent_inputs=definition.target_concurrent_inputs or max_inputs,
            batch_max_size=definition.batch_max_size,
        )

    def delay_before(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        delay_ms = self.initial_delay_ms * self.backoff_coefficient ** (retry - 1)
        return min(delay_ms, self.max_delay_ms) / 1000

    @property
    def concurrent(self) -> bool:
        """Whether a container runs several inputs (or batches) at once, as Modal's runtime decides it."""
        return max(self.max_concurrent_inputs, self.target_concurrent_inputs) > 1

    @property
    def capacity(self) -> int:
        """How many inputs the autoscaler counts one container for: its target concurrency times its batch."""
        return self.target_concurrent_inputs * max(1, self.batch_max_size)
