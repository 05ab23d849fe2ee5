"""The local Ray dashboard in a real headless Chromium: a user who logs in with the token that
`python -m pipeline dashboard` prints sees the pool's ``embedder-0`` on the Actors page; without
the token, or with a wrong one, the page lists no actor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers.browser import Tab, chromium_binary, headless_chromium, shows
from helpers.services import RayCluster
from ray.util.state import list_actors

from workers.settings import BatchSettings, ModelSettings, PoolSettings
from workers.spawn import kill_embedders, start_embedders

REPO = Path(__file__).parents[3]
COOKIE = "ray-authentication-token"  # what Ray's /api/authenticate sets (HttpOnly)
TOKEN_INPUT = "input[placeholder='Enter your authentication token']"
SUBMIT = "div[role=dialog] button.MuiButton-contained"
ACTOR_ROWS = "document.querySelectorAll('tbody tr').length"  # rows of the Actors table
# Bounds on what a user waits for: the single-page app's first render on a busy 2-core box, and
# the Actors page's first poll after the login reloads the page.
PAGE_S, ACTORS_S = 60.0, 60.0


def _dashboard_login(cluster: RayCluster) -> tuple[str, str]:
    """URL and token as `python -m pipeline dashboard` prints them to a user of this stack."""
    env = os.environ | {
        "PIPELINE_STACK__DATA_DIR": str(cluster.stack.data_dir),
        "PIPELINE_STACK__DASHBOARD_PORT": str(cluster.stack.dashboard_port),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "dashboard"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    url, token_line = done.stdout.split()[0], done.stdout.splitlines()[1]
    assert url == cluster.dashboard_url and token_line.startswith("token: ")
    return url, token_line.removeprefix("token: ")


def _row_of(actor_id: str) -> str:
    """JavaScript: the text of the Actors table's row that shows ``actor_id`` ('' while there is none)."""
    return (
        "[...document.querySelectorAll('tr')].map(r => r.innerText)"
        f".find(t => t.includes({json.dumps(actor_id)})) || ''"
    )


async def _actors_api_status(tab: Tab) -> int:
    """The status the Actors page's own API call gets from inside the browser (with its cookies)."""
    return int(
        await tab.evaluate("fetch('logical/actors', {credentials: 'same-origin'}).then(r => r.status)")
    )


async def _submit(tab: Tab, token: str) -> None:
    """Type ``token`` into the login dialog (replacing what it holds) and press its Submit button."""
    await tab.click(TOKEN_INPUT)
    await tab.select_all()
    await tab.type_text(token)
    typed = f"document.querySelector({json.dumps(TOKEN_INPUT)}).value === {json.dumps(token)}"
    await tab.wait_for(typed, 10, "the token typed into the dialog")
    await tab.click(SUBMIT)


@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_the_actors_page_lists_embedder_0_only_after_login_with_the_token(
    ray_cluster: RayCluster, ray_session: None, minilm_path: Path
) -> None:
    chromium_binary()  # a missing browser fails here, with the install command, before Ray work
    url, token = _dashboard_login(ray_cluster)
    namespace = f"embedstream-browser-{uuid.uuid4().hex[:8]}"
    handles, _ = await start_embedders(
        ModelSettings(name_or_path=str(minilm_path)),
        BatchSettings(),
        PoolSettings(num_actors=1, cpus_per_actor=0.5, ready_timeout_s=240),
        namespace=namespace,
    )
    try:
        # The session's other tests may have an embedder-0 of their own: this one is known by its id.
        # On this cluster by address: left to find one itself, the state API refuses where a machine
        # runs several.
        mine = [("name", "=", "embedder-0"), ("ray_namespace", "=", namespace)]
        [actor] = list_actors(address=ray_cluster.address, filters=mine)
        actor_id = actor.actor_id
        async with headless_chromium() as tab:
            await tab.navigate(f"{url}/#/actors")
            # No token: the page asks for one, and its request for the actors was refused.
            await tab.wait_for(shows("Authentication Token Required"), PAGE_S, "login dialog")
            await tab.wait_for(shows("TOTAL"), PAGE_S, "the actors table")
            assert await _actors_api_status(tab) == 401
            assert not await tab.shows("embedder-0") and await tab.evaluate(ACTOR_ROWS) == 0

            # A wrong token: refused, no cookie, still no actor.
            await _submit(tab, "0" * 64)
            await tab.wait_for(shows("Invalid authentication token"), PAGE_S, "refusal")
            assert COOKIE not in await tab.cookies()
            assert await _actors_api_status(tab) == 401
            assert not await tab.shows("embedder-0") and await tab.evaluate(ACTOR_ROWS) == 0

            # The token `pipeline dashboard` printed: the page reloads logged in and lists the actor.
            await _submit(tab, token)
            row = await tab.wait_for(
                _row_of(actor_id), ACTORS_S, f"embedder-0 ({actor_id}) on the Actors page"
            )
            assert "embedder-0" in row and "EmbedderActor" in row and "ALIVE" in row
            assert await tab.evaluate(ACTOR_ROWS) >= 1
            assert (await tab.cookies()).get(COOKIE) == token
            assert await _actors_api_status(tab) == 200
    finally:
        kill_embedders(handles)
