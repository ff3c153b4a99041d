"""Network helpers for tests: servers they start listen on 127.0.0.1 only."""

from __future__ import annotations

from agent.broker import free_port as free_port  # re-exported: one implementation
