"""AUTOMATIC1111's HTTP API (`/sdapi/v1/...`) on the studio's own server, behind `--api`.

The apps that already generate through A1111 (the webuiapi client, Open WebUI, SillyTavern,
chat bots) work with the studio unchanged: their txt2img and img2img run through the same
manager as the UI, in turn with the browser's runs, and land in a History session of their own
that the UI can open in the viewer. `A1111Api(manager, settings, writer)` holds that state;
`routes()` are the FastAPI routes app.py hands to the server. Modules: payloads (A1111's bodies
<-> the studio's requests), jobs (queue, progress, interrupt, the API's history), catalog
(samplers, models, options), routes (HTTP). Nothing here imports Gradio.
"""
from __future__ import annotations

from studio.a1111.jobs import JobBoard


class A1111Api:
    def __init__(self, manager, settings, writer):
        self.manager, self.settings = manager, settings
        # As the UI's queue: at most --max-queue waiting, and on a public server half of that from one address
        self.board = JobBoard(manager, writer, max_jobs=settings.max_queue,
                              per_address=max(2, settings.max_queue // 2) if settings.public else None)

    def runs(self):
        """The API's runs (a studio.history.SessionHistory snapshot), for the UI's History."""
        return self.board.history

    @property
    def runs_shown_in_ui(self) -> bool:
        """Whether a browser session may take in the API's runs: locally, or when --auth makes every
        visitor the one user. A public server without it would show one caller's pictures to all."""
        return not self.settings.public or bool(self.settings.auth)

    def routes(self) -> list:
        from studio.a1111.routes import router
        from studio.web import slow_failures

        pair = self.settings.auth_pair()
        return router(self.manager, self.settings, self.board, slow_failures(*pair) if pair else None).routes
