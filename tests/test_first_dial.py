"""The first dial to a node that has just come up is not held up by WireGuard's 5 s retry.

A new node reaches the other nodes' netmaps before its home DERP region does, and its region
may not have registered it yet when they dial it. A dial in either window used to send
WireGuard's handshake initiation to nowhere, and wireguard-go tries again only 5 s later: on
the local tailnet about 1 in 5 of "start a node, dial it at once" took 5.3 s instead of ~15 ms
(helper/peerpath.go, helper/derphome.go). Each dial here is bounded at 4 s, below that retry:
a dial that needs the bound has met it. The test counts those; it times nothing.
"""

from __future__ import annotations

import trio

ROUNDS = 40
BOUND = 4.0


async def test_the_first_dial_to_a_node_that_just_came_up_is_not_held_up(tailnet, tailnet_node):
    held_up: list[str] = []
    without_path = 0  # rounds whose dial began before the client knew the server's path
    async with tailnet_node("first-client") as client:
        for i in range(ROUNDS):
            async with tailnet_node(f"first-server-{i}") as server:
                listener = await server.listen(80)
                ip = str(server.tailscale_ips[0])
                peers = (await client.status()).peers
                if not any(ip in map(str, p.tailscale_ips) and p.relay for p in peers):
                    without_path += 1
                try:
                    with trio.fail_after(BOUND):
                        stream = await client.dial(ip, 80)
                except trio.TooSlowError:
                    held_up.append(f"round {i}")
                else:
                    await stream.aclose()
                await listener.aclose()
    print(f"\n{ROUNDS} first dials, {without_path} begun before the client had the server's "
          f"path; held up {len(held_up)}")
    assert held_up == [], f"{len(held_up)} of {ROUNDS} first dials needed more than {BOUND} s"

