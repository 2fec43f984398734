"""The same data-path tests on uvloop (what `python -m gateway` runs on): its transports
differ from asyncio's in flow control and write paths, so the protocol-level behaviour is
checked on both loops. Each wrapped test runs in its own uvloop via asyncio.Runner."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import test_gw_proxy as basic
import test_gw_proxy_batching as batching
import test_gw_proxy_hardening as hard
import test_gw_proxy_mirror as mirror
import test_gw_proxy_retry as retry
import test_gw_proxy_stream as stream
from gwkit import Env

uvloop = pytest.importorskip("uvloop")


def _on_uvloop(test: Callable[[Env], Awaitable[None]]) -> Callable[[], None]:
    def run() -> None:
        async def main() -> None:
            assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
            env = Env()
            try:
                await test(env)
            finally:
                await env.close()

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())

    run.__name__ = run.__qualname__ = test.__name__
    run.__doc__ = test.__doc__
    return run


for _t in (
    basic.test_hop_by_hop_headers_stripped_both_ways,
    batching.test_a_turns_requests_and_responses_leave_after_all_its_reads,
    basic.test_busy_poll_keeps_the_loop_polling_only_after_traffic,
    basic.test_keepalive_both_sides_reuses_one_upstream_connection,
    basic.test_stop_finishes_inflight_then_refuses,
    hard.test_bad_chunk_size_mid_body_is_400_and_close,
    hard.test_slowloris_header_timeout,
    mirror.test_mirror_to_backend_gets_shadow_host_and_body,
    retry.test_connect_failure_retries_on_another_cluster,
    retry.test_killing_one_cluster_while_gets_flow_yields_only_2xx,
    retry.test_no_leaked_sockets_after_a_burst_with_failures,
    retry.test_per_try_timeout_moves_to_the_next_endpoint,
    retry.test_nothing_retried_once_response_bytes_left,
    stream.test_chunked_upload_and_chunked_response,
    stream.test_expect_100_continue_answered_by_the_proxy,
    stream.test_large_download_is_streamed_with_backpressure,
    stream.test_large_upload_is_streamed_with_backpressure,
    stream.test_pipelined_requests_answered_in_order,
    stream.test_raw_upgrade_splices_bytes_both_ways,
    stream.test_websocket_through_the_proxy,
    stream.test_http10_client,
):
    globals()[_t.__name__] = _on_uvloop(_t)
