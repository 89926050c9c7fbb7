"""The viewer's scrub: studio/player.js in a gr.HTML. When a run opens, every step's x_t and x0
(fast decoder) and attention maps arrive at once (studio.replay.frames); the player's slider,
arrow keys and Play then swap frames in the browser with no server call. Where a person stops,
the viewer's step slider (a Gradio one) is set to that step, so the server decodes it with the
chosen decoder and the lens, attention and branch tools follow; moving that slider moves the
player too.
"""
from __future__ import annotations

import json

import gradio as gr

from studio import replay
from studio.errors import StudioError

# The player runs in a sandboxed iframe of its own: Gradio's page styles make every change in it
# re-style the whole page (about 4 ms a frame here); in its own document a frame switch paints
# in about 1 ms. The two sides talk by postMessage: the viewer's slider moves the player, and
# where a person stops in the player, the viewer's slider follows (and the server's tools).
GLUE = """
const holder = element.querySelector('.studio-player-root') || element;
const follow = (k) => {
  const r = document.querySelector('#viewer-step input[type=range]');
  if (!r || String(r.value) === String(k)) return;
  r.value = k;
  r.dispatchEvent(new Event('input', {bubbles: true}));
  r.dispatchEvent(new Event('change', {bubbles: true}));
};
const mount = () => {
  let data = null;
  try { data = JSON.parse(props.value || 'null'); } catch (e) { data = null; }
  if (!data) { holder.replaceChildren(); window.studioViewerFrame = null; return; }
  const frame = document.createElement('iframe');
  frame.className = 'studio-player-iframe';
  frame.title = 'Step player';
  frame.setAttribute('sandbox', 'allow-scripts');
  const script = studioPlayer.toString() + '\\n' +
    'const player = studioPlayer(document.getElementById("player"), ' + JSON.stringify(data) + ', ' +
    '{onStop: (k) => parent.postMessage({studioStep: k}, "*")});\\n' +
    'addEventListener("message", (e) => { if (e.data && e.data.studioShow) player.show(e.data.studioShow); });';
  frame.srcdoc = '<!doctype html><html><head><meta charset="utf-8"><style>' + PLAYER_CSS +
    '</style></head><body><div id="player"></div><script>' + script.replace(/<\\//g, '<\\\\/') +
    '</scr' + 'ipt></body></html>';
  holder.replaceChildren(frame);
  window.studioViewerFrame = frame;
};
mount();
watch('value', mount);
if (!window.studioViewerFollows) {
  window.studioViewerFollows = true;
  window.addEventListener('message', (event) => {
    const frame = window.studioViewerFrame;
    if (frame && event.source === frame.contentWindow && event.data && event.data.studioStep) follow(event.data.studioStep);
  });
  document.addEventListener('input', (event) => {
    const slider = event.target.closest && event.target.closest('#viewer-step');
    const frame = window.studioViewerFrame;
    if (slider && frame && frame.contentWindow) frame.contentWindow.postMessage({studioShow: Number(event.target.value)}, '*');
  }, true);
}
"""
FRAME_CSS = ".studio-player-iframe { width: 100%; height: 390px; border: 0; display: block; }"


def component() -> gr.HTML:
    css = replay.PLAYER_CSS.read_text() + "body { margin: 0; font-family: system-ui, sans-serif; font-size: 15px; }"
    return gr.HTML("", elem_id="viewer-player", html_template='<div class="studio-player-root"></div>',
                   css_template=FRAME_CSS,
                   js_on_load=f"const PLAYER_CSS = {json.dumps(css)};\n" + replay.PLAYER_JS.read_text() + GLUE)


def frames(manager, result) -> str:
    """The player's value: every step's frames from the fast decoder, as JSON."""
    try:
        return json.dumps(replay.frames(manager, result, "fast"))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
