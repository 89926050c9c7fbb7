// The step player of Diffusion Studio: every frame of a run is in the page, so moving between
// steps swaps pictures in the browser, with no server call. The viewer (a gr.HTML) and the
// replay page (studio/replay.py) both run this file; it needs no library and no network.
//
// studioPlayer(root, data, options) builds the player inside `root` and returns {show, step}.
// data: {decoder, steps: [{caption, xt, x0, attention: {word: map}}], words: [...], word}; every
// picture is a data: URI; an attention map is a grayscale picture, drawn over x0 with
// mix-blend-mode: multiply (dark: little attention, white: the word's most).
// options.slider (default true): the player's own slider; without it a page drives the player
// with show(step), and options.drive(step) is how Play moves the page's own slider.
function studioPlayer(root, data, options) {
  const {slider: ownSlider = true, drive = null} = options || {};
  const steps = data.steps || [];
  const make = (tag, attrs, parent) => {
    const node = document.createElement(tag);
    Object.assign(node, attrs || {});
    if (parent) parent.appendChild(node);
    return node;
  };
  root.replaceChildren();
  root.classList.add("studio-player");
  if (!steps.length) {
    make("p", {textContent: data.empty || "No run yet."}, root);
    return {show() {}, step: () => 0};
  }
  const bar = make("div", {className: "studio-player-bar"}, root);
  const play = make("button", {type: "button", textContent: "Play", className: "studio-player-play"}, bar);
  const slider = make("input", {type: "range", min: 1, max: steps.length, step: 1, value: steps.length,
                                className: "studio-player-slider", hidden: !ownSlider}, bar);
  slider.setAttribute("aria-label", "Step");
  const caption = make("span", {className: "studio-player-caption"}, bar);
  const words = data.words || [];
  let word = words.length ? (data.word || words[0]) : null;
  if (words.length) {
    make("label", {textContent: "Word", className: "studio-player-label"}, bar);
    const picker = make("select", {className: "studio-player-word"}, bar);
    picker.setAttribute("aria-label", "Word");
    for (const w of words) make("option", {value: w, textContent: w, selected: w === word}, picker);
    picker.addEventListener("change", () => { word = picker.value; show(current); });
  }
  const row = make("div", {className: "studio-player-row"}, root);
  const figure = (label) => {
    const box = make("figure", {}, row);
    const frame = make("div", {className: "studio-player-frame"}, box);
    const img = make("img", {alt: label}, frame);
    make("figcaption", {textContent: label}, box);
    return {box, frame, img};
  };
  const xt = figure("x_t (noisy)");
  const x0 = figure("predicted x0");
  const lit = words.length ? figure("x0 under the word's attention") : null;
  let overlay = null;
  if (lit) overlay = make("img", {alt: "attention", className: "studio-player-map"}, lit.frame);
  make("p", {className: "studio-player-note", textContent: `Frames: ${data.decoder}. ← → step, Play animates.`}, root);

  // Decoded ahead: swapping to an <img> that is already decoded paints in the next frame.
  const warm = (src) => { const i = new Image(); i.src = src; if (i.decode) i.decode().catch(() => {}); return i; };
  const cache = steps.map((s) => [warm(s.xt), warm(s.x0)]);
  let current = steps.length;
  function show(k) {
    current = Math.min(Math.max(1, Math.round(Number(k)) || 1), steps.length);
    const s = steps[current - 1];
    xt.img.src = cache[current - 1][0].src;
    x0.img.src = cache[current - 1][1].src;
    if (lit) {
      lit.img.src = s.x0;
      overlay.src = (s.attention || {})[word] || "";
      overlay.style.visibility = overlay.src ? "visible" : "hidden";
    }
    caption.textContent = s.caption;
    slider.value = current;
    root.dataset.step = current;
  }
  const go = (k) => (drive ? drive(k) : show(k));  // the page's slider, when it owns the step
  let timer = null;
  const stop = () => {
    if (timer) clearInterval(timer);
    timer = null;
    play.textContent = "Play";
  };
  play.addEventListener("click", () => {
    if (timer) return stop();
    if (current >= steps.length) go(1);
    play.textContent = "Pause";
    timer = setInterval(() => (current >= steps.length ? stop() : go(current + 1)), 1000 / (data.fps || 8));
  });
  slider.addEventListener("input", () => show(slider.value));
  root.tabIndex = 0;
  root.addEventListener("keydown", (event) => {
    const by = {ArrowLeft: -1, ArrowDown: -1, ArrowRight: 1, ArrowUp: 1}[event.key];
    if (!by || event.target === slider || event.target.tagName === "SELECT") return;  // they step themselves
    event.preventDefault();
    go(current + by);
  });
  show(data.step || steps.length);
  return {show, step: () => current};
}
