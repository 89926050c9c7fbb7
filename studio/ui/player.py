"""The viewer's scrub: studio/player.js in a gr.HTML, driven by the viewer's step slider in the
browser. When a run opens, every step's x_t and x0 (fast decoder) and attention maps arrive at
once (studio.replay.frames); moving the slider then swaps frames with no server call, while the
slider's change event still decodes the step it stops on with the chosen decoder, server-side.
"""
from __future__ import annotations

import json

import gradio as gr

from studio import replay
from studio.errors import StudioError

# Mount the player on the value (the frames as JSON); follow the viewer's slider as it moves
GLUE = """
const mount = () => {
  const root = element.querySelector('.studio-player-root') || element;
  let data = null;
  try { data = JSON.parse(props.value || 'null'); } catch (e) { data = null; }
  if (!data) { root.replaceChildren(); window.studioViewerPlayer = null; return; }
  const range = () => document.querySelector('#viewer-step input[type=range]');
  const drive = (k) => {
    const r = range();
    if (!r) return;
    r.value = k;
    r.dispatchEvent(new Event('input', {bubbles: true}));
    r.dispatchEvent(new Event('change', {bubbles: true}));
  };
  window.studioViewerPlayer = studioPlayer(root, data, {slider: false, drive});
};
mount();
watch('value', mount);
if (!window.studioViewerFollows) {
  window.studioViewerFollows = true;
  document.addEventListener('input', (event) => {
    const slider = event.target.closest && event.target.closest('#viewer-step');
    if (slider && window.studioViewerPlayer) window.studioViewerPlayer.show(event.target.value);
  }, true);
}
"""


def component() -> gr.HTML:
    return gr.HTML("", elem_id="viewer-player", html_template='<div class="studio-player-root"></div>',
                   css_template=replay.PLAYER_CSS.read_text(), js_on_load=replay.PLAYER_JS.read_text() + GLUE)


def frames(manager, result) -> str:
    """The player's value: every step's frames from the fast decoder, as JSON."""
    try:
        return json.dumps(replay.frames(manager, result, "fast"))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
