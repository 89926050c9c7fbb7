// The step player of Diffusion Studio: every frame of a run is in the page, so moving between
// steps swaps pictures in the browser, with no server call. The viewer (a gr.HTML) and the
// replay page (studio/replay.py) both run this file; it needs no library and no network.
//
// studioPlayer(root, data, options) builds the player inside `root` and returns {show, step}.
// data: {decoder, steps: [{caption, xt, x0, attention: {word: map}}], words: [...], word}; every
// picture is a data: URI; an attention map is a grayscale picture, drawn over x0 with
// mix-blend-mode: multiply (dark: little attention, white: the word's most).
// options.onStop(step): called with the 1-based step a person stopped on (the slider let go, a
// key, the end of Play), so a page can do the slow work for that step only. A page may also
// move the player itself with show(step).
function studioPlayer(root, data, options) {
  const {onStop = null} = options || {};
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
                                className: "studio-player-slider"}, bar);
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
  const SIDE = 256;
  const figure = (label) => {
    const box = make("figure", {}, row);
    const canvas = make("canvas", {width: SIDE, height: SIDE, className: "studio-player-frame"}, box);
    canvas.setAttribute("aria-label", label);
    make("figcaption", {textContent: label}, box);
    const context = canvas.getContext("2d");
    context.imageSmoothingQuality = "high";
    return {canvas, context};
  };
  const xt = figure("x_t (noisy)");
  const x0 = figure("predicted x0");
  const lit = words.length ? figure("x0 under the word's attention") : null;
  make("p", {className: "studio-player-note", textContent: `Frames: ${data.decoder}. ← → step, Play animates.`}, root);

  // Every frame decoded ahead into a bitmap: a switch is a drawImage onto a canvas, no image
  // loading and no layout, so it paints in the next frame.
  const bitmaps = new Map();
  const bitmap = (src) => {
    if (!src) return null;
    if (!bitmaps.has(src)) {
      const entry = {ready: null};
      const image = new Image();
      image.src = src;
      image.decode().then(() => createImageBitmap(image)).then((b) => {
        entry.ready = b;
        if (entry.waiting) show(current);
      }).catch(() => {});
      bitmaps.set(src, entry);
    }
    return bitmaps.get(src);
  };
  steps.forEach((s) => { bitmap(s.xt); bitmap(s.x0); });
  const draw = (target, src, mode) => {
    const entry = bitmap(src);
    if (!entry) return;
    if (!entry.ready) { entry.waiting = true; return; }
    target.context.globalCompositeOperation = mode || "source-over";
    target.context.drawImage(entry.ready, 0, 0, SIDE, SIDE);
  };
  let current = steps.length;
  function show(k) {
    current = Math.min(Math.max(1, Math.round(Number(k)) || 1), steps.length);
    const s = steps[current - 1];
    draw(xt, s.xt);
    draw(x0, s.x0);
    if (lit) {
      draw(lit, s.x0);
      draw(lit, (s.attention || {})[word], "multiply");
    }
    caption.textContent = s.caption;
    slider.value = current;
    root.dataset.step = current;
  }
  const stopped = () => onStop && onStop(current);
  let timer = null;
  const stop = () => {
    if (timer) clearInterval(timer);
    timer = null;
    play.textContent = "Play";
    stopped();
  };
  play.addEventListener("click", () => {
    if (timer) return stop();
    if (current >= steps.length) show(1);
    play.textContent = "Pause";
    timer = setInterval(() => (current >= steps.length ? stop() : show(current + 1)), 1000 / (data.fps || 8));
  });
  slider.addEventListener("input", () => show(slider.value));
  slider.addEventListener("change", stopped);  // let go (a key press is both at once)
  root.tabIndex = 0;
  root.addEventListener("keydown", (event) => {
    const by = {ArrowLeft: -1, ArrowDown: -1, ArrowRight: 1, ArrowUp: 1}[event.key];
    if (!by || event.target === slider || event.target.tagName === "SELECT") return;  // they step themselves
    event.preventDefault();
    show(current + by);
    stopped();
  });
  show(data.step || steps.length);
  return {show, step: () => current};
}
