// riffstream's page: listen to the stream, watch its spectrogram scroll by, steer it.
// Plain JavaScript, no build step. The server's API is described at /openapi.json.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const audio = $("audio");
  const canvas = $("spectrogram");
  const ctx = canvas.getContext("2d");

  const token = new URLSearchParams(location.search).get("token");
  const listenerId = randomId(16);

  // Spectrogram geometry: the clip PNGs are 512 pixels high at 100 columns a second; the
  // canvas keeps that aspect, so a clip looks as the model made it.
  const PNG_HEIGHT = 512;
  const PNG_COLUMNS_PER_SECOND = 100;
  const NOW_AT = 0.62; // where the "now" line stands, as a fraction of the canvas width
  const KEEP_SEGMENTS = 64;

  const state = {
    status: null,
    statusAt: 0, // performance.now() when status arrived
    listenerStart: null, // stream time at which this page's audio begins, from the `listener` event
    wantPlay: false,
    retryDelay: 1000,
    retryTimer: null,
    pending: [], // prompts sent but not yet seen in the queue or in a clip: {text, at}
    segments: new Map(), // "index@start" -> clip record (a loop repeats an index at a new start)
    images: new Map(), // png path -> {canvas|null, failed}
    dirty: new Set(), // settings fields the user is editing
    applied: {}, // settings sent and accepted, not yet in the status: name -> {value, at}
    announced: { prompts: null, behind: null },
    events: null,
    eventsRetry: 1000,
    messageTimer: null,
  };

  // ------------------------------------------------------------------ helpers

  function randomId(length) {
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const bytes = new Uint8Array(length);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => alphabet[b % alphabet.length]).join("");
  }

  function setText(element, text) {
    if (element.textContent !== text) element.textContent = text;
  }

  function setMessage(text, isError = false) {
    const message = $("message");
    message.textContent = text;
    message.classList.toggle("error", isError);
    message.title = text;
    clearTimeout(state.messageTimer);
    if (text) state.messageTimer = setTimeout(() => setMessage(""), isError ? 15000 : 8000);
  }

  function announce(text) {
    $("announce").textContent = text;
  }

  function formatSeconds(seconds) {
    if (!Number.isFinite(seconds)) return "–";
    return seconds >= 100 ? `${Math.round(seconds)} s` : `${seconds.toFixed(1)} s`;
  }

  // ------------------------------------------------------------------ control calls

  async function post(path, body) {
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    let response;
    try {
      response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
    } catch {
      throw new Error("the station did not answer; is it still running?");
    }
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      let detail = data && typeof data.detail === "string" ? data.detail : `${response.status} ${response.statusText}`;
      detail = detail.split("\n")[0];
      if (response.status === 401 || response.status === 403) {
        detail += " (open the address the station printed at start, the one ending in ?token=…)";
      }
      throw new Error(detail);
    }
    return data;
  }

  $("prompt-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("prompt");
    const text = input.value.trim();
    if (!text) {
      setMessage("Type a prompt first, e.g. smooth jazz.", true);
      return;
    }
    try {
      const data = await post("/api/prompt", { prompt: text });
      const queued = data && data.queued ? data.queued : text;
      state.pending.push({ text: queued, at: performance.now() });
      input.value = "";
      const now = state.status && state.status.steer === "now";
      setMessage(now ? `Queued: ${queued} (turning now: heard in a few seconds)` : `Queued: ${queued}`);
      renderQueue();
    } catch (error) {
      setMessage(error.message, true);
    }
  });

  const SETTINGS = ["seed", "clips_per_transition", "steps", "negative_prompt"];

  for (const name of SETTINGS) {
    $(name).addEventListener("input", () => state.dirty.add(name));
  }

  // Settings take effect when the next clip is planned, so the status shows the old values
  // for a while after a change: until it catches up, the form keeps what was applied.
  function fillSettings(settings, force = false) {
    if (!settings) return;
    const now = performance.now();
    for (const name of SETTINGS) {
      const input = $(name);
      const applied = state.applied[name];
      if (applied) {
        if ((settings[name] ?? null) === applied.value || now - applied.at > 120000) delete state.applied[name];
        else if (!force) continue;
      }
      if (!force && (state.dirty.has(name) || document.activeElement === input)) continue;
      const value = settings[name];
      input.value = value === null || value === undefined ? "" : String(value);
    }
  }

  $("settings-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    if (!form.reportValidity()) return;
    const current = (state.status && state.status.settings) || {};
    const body = {};
    for (const name of ["seed", "clips_per_transition", "steps"]) {
      const raw = $(name).value.trim();
      if (raw === "") continue;
      const value = Number(raw);
      if (value !== current[name]) body[name] = value;
    }
    const negative = $("negative_prompt").value.trim() || null;
    if (negative !== (current.negative_prompt ?? null)) body.negative_prompt = negative;
    if (Object.keys(body).length === 0) {
      setMessage("Nothing to change: the settings are as shown.");
      state.dirty.clear();
      return;
    }
    try {
      const data = await post("/api/settings", body);
      state.dirty.clear();
      for (const [name, value] of Object.entries(body)) state.applied[name] = { value, at: performance.now() };
      if (data && data.settings) {
        if (state.status) state.status.settings = data.settings;
        fillSettings(data.settings, true);
      }
      const said = Object.entries(body)
        .map(([key, value]) => `${key.replaceAll("_", " ")} ${value === null ? "cleared" : value}`)
        .join(", ");
      setMessage(`Settings applied to the clips to come: ${said}`);
    } catch (error) {
      setMessage(error.message, true);
    }
  });

  // ------------------------------------------------------------------ audio

  function streamUrl() {
    return `/stream.mp3?listener=${encodeURIComponent(listenerId)}`;
  }

  function startAudio() {
    clearTimeout(state.retryTimer);
    state.wantPlay = true;
    state.listenerStart = null;
    // A fresh connection each time: the listener joins at the live point, not at stale buffered audio.
    audio.src = streamUrl();
    audio.volume = Number($("volume").value);
    const playing = audio.play();
    if (playing) {
      playing.catch((error) => {
        if (!state.wantPlay || error.name === "AbortError") return;
        if (error.name === "NotAllowedError") {
          stopAudio();
          setMessage("The browser blocked playback: press Play.", true);
        }
      });
    }
    renderButton();
  }

  function stopAudio() {
    clearTimeout(state.retryTimer);
    state.wantPlay = false;
    state.listenerStart = null;
    audio.pause();
    audio.removeAttribute("src");
    audio.load(); // closes the connection
    renderButton();
  }

  function retryAudio(reason) {
    if (!state.wantPlay) return;
    clearTimeout(state.retryTimer);
    setMessage(`${reason}; reconnecting…`, true);
    state.retryTimer = setTimeout(() => {
      if (state.wantPlay) startAudio();
    }, state.retryDelay);
    state.retryDelay = Math.min(state.retryDelay * 2, 15000);
  }

  function renderButton() {
    const button = $("play");
    button.dataset.playing = String(state.wantPlay);
    setText($("play-label"), state.wantPlay ? "Pause" : "Play");
    const buffering = state.wantPlay && (audio.paused || audio.readyState < 3);
    button.dataset.buffering = String(buffering);
  }

  $("play").addEventListener("click", () => (state.wantPlay ? stopAudio() : startAudio()));

  audio.addEventListener("playing", () => {
    if (state.retryDelay > 1000) setMessage("");
    state.retryDelay = 1000;
    renderButton();
  });
  audio.addEventListener("waiting", renderButton);
  audio.addEventListener("pause", renderButton);
  audio.addEventListener("error", () => {
    if (state.wantPlay && audio.getAttribute("src")) retryAudio("The audio stream could not be opened or dropped");
  });
  audio.addEventListener("ended", () => retryAudio("The audio stream ended"));

  // The volume is remembered in this browser (where storage is allowed).
  const volume = $("volume");
  const storage = (() => {
    try {
      return window.localStorage;
    } catch {
      return null;
    }
  })();
  const saved = storage ? storage.getItem("riffstream.volume") : null;
  if (saved !== null && Number(saved) >= 0 && Number(saved) <= 1) volume.value = saved;
  const applyVolume = () => {
    audio.volume = Number(volume.value);
    volume.setAttribute("aria-valuetext", `${Math.round(audio.volume * 100)}%`);
    try {
      if (storage) storage.setItem("riffstream.volume", volume.value);
    } catch {
      // storage full or refused: the volume still applies to this page
    }
  };
  volume.addEventListener("input", applyVolume);
  applyVolume();

  if ("mediaSession" in navigator) {
    try {
      navigator.mediaSession.setActionHandler("play", () => startAudio());
      navigator.mediaSession.setActionHandler("pause", () => stopAudio());
    } catch {
      // an older browser without these actions: the page's own button still works
    }
  }

  // ------------------------------------------------------------------ time

  // The stream time heard now: this listener's start plus how far its audio has played; before
  // the server says where this listener starts (or while not listening), the station's clock.
  function playhead() {
    if (state.wantPlay && state.listenerStart !== null) return state.listenerStart + audio.currentTime;
    if (!state.status) return 0;
    const since = (performance.now() - state.statusAt) / 1000;
    return state.status.stream_time + Math.min(since, 3);
  }

  function orderedSegments() {
    return Array.from(state.segments.values()).sort((a, b) => a.start - b.start);
  }

  function heardSegment(t, segments) {
    let heard = null;
    for (const segment of segments) {
      if (segment.start <= t + 1e-3) heard = segment;
      else break;
    }
    return heard;
  }

  // ------------------------------------------------------------------ events

  function connectEvents() {
    const events = new EventSource(`/api/events?listener=${encodeURIComponent(listenerId)}`);
    state.events = events;
    events.addEventListener("open", () => {
      state.eventsRetry = 1000;
      setConnection("live", "live");
    });
    events.addEventListener("error", () => {
      if (events.readyState === EventSource.CLOSED) {
        // The server answered with an error (for example, full): EventSource gives up, so retry here.
        setConnection("reconnecting", "reconnecting…");
        setTimeout(connectEvents, state.eventsRetry);
        state.eventsRetry = Math.min(state.eventsRetry * 2, 30000);
      } else {
        setConnection("reconnecting", "reconnecting…"); // EventSource retries by itself
      }
    });
    events.addEventListener("status", (event) => onStatus(JSON.parse(event.data)));
    events.addEventListener("clip", (event) => onClip(JSON.parse(event.data)));
    events.addEventListener("cut", (event) => onCut(JSON.parse(event.data)));
    events.addEventListener("listener", (event) => {
      const data = JSON.parse(event.data);
      if (data.id === listenerId && state.wantPlay) state.listenerStart = data.start;
    });
  }

  function setConnection(stateName, text) {
    const badge = $("connection");
    badge.dataset.state = stateName;
    setText(badge, text);
  }

  function onStatus(status) {
    const first = state.status === null;
    if (!first && status.stream_time < state.status.stream_time - 5) {
      // The station restarted: its clock and clip numbers began again.
      state.segments.clear();
      state.images.clear();
      state.listenerStart = null;
      if (state.wantPlay) startAudio();
    }
    state.status = status;
    state.statusAt = performance.now();
    if (first) {
      fillSettings(status.settings, true);
      if (status.token_required && !token) {
        setMessage("Steering this station needs its token: open the address it printed at start (…/?token=…).");
      }
    } else {
      fillSettings(status.settings);
    }
    if (status.limits) {
      const chars = status.limits.prompt_chars;
      if (chars) {
        $("prompt").maxLength = chars;
        $("negative_prompt").maxLength = chars;
      }
      if (Array.isArray(status.limits.steps)) {
        $("steps").min = String(status.limits.steps[0]);
        $("steps").max = String(status.limits.steps[1]);
      }
    }
    renderStatus();
  }

  function onClip(record) {
    state.segments.set(`${record.index}@${record.start}`, record);
    loadImage(record.png);
    state.pending = state.pending.filter((p) => p.text !== record.prompt_b);
    pruneSegments();
  }

  // A steer took back the stream from `start` on: the clips made for it there are not heard.
  function onCut(data) {
    for (const [key, segment] of state.segments) {
      if (segment.start >= data.start - 1e-3) state.segments.delete(key);
    }
  }

  function pruneSegments() {
    const segments = orderedSegments();
    const t = playhead();
    const visiblePast = canvasSeconds().past + 10;
    for (const segment of segments) {
      if (state.segments.size <= 2) break;
      const tooOld = segment.start + segment.duration < t - visiblePast;
      if (tooOld || state.segments.size > KEEP_SEGMENTS) state.segments.delete(`${segment.index}@${segment.start}`);
    }
    const used = new Set(Array.from(state.segments.values(), (s) => s.png));
    for (const png of state.images.keys()) if (!used.has(png)) state.images.delete(png);
  }

  // ------------------------------------------------------------------ spectrogram images

  // A colour map for the greyscale spectrogram: quiet is near black, loud is warm and bright.
  const LUT = (() => {
    const stops = [
      [0.0, [5, 6, 10]], [0.2, [34, 14, 70]], [0.45, [120, 34, 120]],
      [0.7, [226, 92, 62]], [0.88, [248, 170, 80]], [1.0, [255, 240, 190]],
    ];
    const table = new Uint8ClampedArray(256 * 3);
    for (let i = 0; i < 256; i++) {
      const t = Math.pow(i / 255, 0.6);
      let k = 0;
      while (k < stops.length - 2 && t > stops[k + 1][0]) k++;
      const [t0, c0] = stops[k];
      const [t1, c1] = stops[k + 1];
      const f = Math.min(1, Math.max(0, (t - t0) / (t1 - t0)));
      for (let c = 0; c < 3; c++) table[i * 3 + c] = c0[c] + (c1[c] - c0[c]) * f;
    }
    return table;
  })();

  function loadImage(png) {
    if (!png || state.images.has(png)) return;
    const entry = { canvas: null, failed: false };
    state.images.set(png, entry);
    const image = new Image();
    image.decoding = "async";
    image.addEventListener("load", () => {
      const off = document.createElement("canvas");
      off.width = image.naturalWidth;
      off.height = image.naturalHeight;
      const offCtx = off.getContext("2d", { willReadFrequently: true });
      offCtx.drawImage(image, 0, 0);
      const pixels = offCtx.getImageData(0, 0, off.width, off.height);
      const data = pixels.data;
      for (let i = 0; i < data.length; i += 4) {
        const v = Math.max(data[i], data[i + 1], data[i + 2]) * 3;
        data[i] = LUT[v];
        data[i + 1] = LUT[v + 1];
        data[i + 2] = LUT[v + 2];
      }
      offCtx.putImageData(pixels, 0, 0);
      entry.canvas = off;
    });
    image.addEventListener("error", () => {
      entry.failed = true;
    });
    image.src = png;
  }

  // ------------------------------------------------------------------ drawing

  function canvasSeconds() {
    const width = canvas.clientWidth || 600;
    const height = canvas.clientHeight || 200;
    const perSecond = (height / PNG_HEIGHT) * PNG_COLUMNS_PER_SECOND;
    return { perSecond, past: (width * NOW_AT) / perSecond, ahead: (width * (1 - NOW_AT)) / perSecond };
  }

  function resizeCanvas() {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.round(canvas.clientWidth * ratio);
    const height = Math.round(canvas.clientHeight * ratio);
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  }

  function draw() {
    resizeCanvas();
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    const { perSecond } = canvasSeconds();
    const nowX = Math.round(width * NOW_AT);
    const t = playhead();
    const segments = orderedSegments();

    ctx.fillStyle = "#05060a";
    ctx.fillRect(0, 0, width, height);
    ctx.imageSmoothingEnabled = true;

    let drawn = 0;
    let previous = null;
    const labels = [];
    for (const segment of segments) {
      const x = nowX + (segment.start - t) * perSecond;
      const w = segment.duration * perSecond;
      const entry = state.images.get(segment.png);
      const changed = !previous || previous.prompt_b !== segment.prompt_b;
      if (x < width && x + w > 0) {
        if (entry && entry.canvas) {
          drawSegment(entry.canvas, segment, previous, x, w, height, perSecond);
          drawn++;
        } else {
          ctx.fillStyle = entry && entry.failed ? "#14151c" : "#0b0c12";
          ctx.fillRect(x, 0, w, height);
        }
        if (segment.loop) {
          ctx.fillStyle = "rgba(240, 160, 75, 0.16)";
          ctx.fillRect(x, 0, w, height);
          labels.push({ x, text: "loop", colour: "#f0a04b" });
        } else if (changed) {
          labels.push({ x, text: `→ ${segment.prompt_b}`, colour: "#e7e8ee" });
        } else {
          labels.push({ x, text: `#${segment.index}`, colour: "rgba(231, 232, 238, 0.6)", small: true });
        }
      }
      previous = segment;
    }

    // What has not been heard yet is dimmed; "now" is a fixed line.
    ctx.fillStyle = "rgba(5, 6, 10, 0.42)";
    ctx.fillRect(nowX, 0, width - nowX, height);

    drawAxis(t, nowX, width, height, perSecond);

    ctx.fillStyle = "#f0a04b";
    ctx.fillRect(nowX - 1, 0, 2, height);
    ctx.textBaseline = "top";
    ctx.font = "bold 11px system-ui, sans-serif";
    ctx.fillText("now", nowX + 5, height - 32);

    drawLabels(labels);

    if (segments.length === 0) {
      ctx.fillStyle = "#9a9db0";
      ctx.font = "14px system-ui, sans-serif";
      ctx.textBaseline = "middle";
      ctx.fillText("waiting for the first clip…", 16, height / 2);
    }
    state.drawn = drawn;
    requestAnimationFrame(draw);
  }

  // Clip marks along the top: a prompt change ("→ jazz") wins over a clip number where they collide.
  function drawLabels(labels) {
    ctx.font = "12px system-ui, sans-serif";
    ctx.textBaseline = "top";
    const placed = [];
    for (const label of labels) {
      const text = label.text.length > 40 ? `${label.text.slice(0, 39)}…` : label.text;
      const x = Math.max(4, label.x + 4);
      const item = { ...label, text, left: x, right: x + ctx.measureText(text).width };
      const last = placed[placed.length - 1];
      if (last && item.left < last.right + 8) {
        if (last.small && !item.small) placed[placed.length - 1] = item;
        continue;
      }
      placed.push(item);
    }
    for (const label of labels) {
      ctx.fillStyle = label.colour;
      ctx.fillRect(label.x, 0, 1, label.small ? 10 : 24);
    }
    for (const label of placed) {
      ctx.fillStyle = "rgba(5, 6, 10, 0.7)";
      ctx.fillRect(label.left - 3, 4, label.right - label.left + 6, 17);
      ctx.fillStyle = label.colour;
      ctx.fillText(label.text, label.left, 7);
    }
  }

  function drawSegment(image, segment, previous, x, w, height, perSecond) {
    // Where this clip crossfades in over the previous one, fade it in across the overlap.
    const overlap = previous ? previous.start + previous.duration - segment.start : 0;
    const fadePx = Math.min(w, Math.max(0, overlap * perSecond));
    if (fadePx < 2) {
      ctx.drawImage(image, x, 0, w, height);
      return;
    }
    const sourcePerPx = image.width / w;
    const slices = 8;
    const slice = fadePx / slices;
    for (let i = 0; i < slices; i++) {
      ctx.globalAlpha = (i + 0.5) / slices;
      const from = i * slice * sourcePerPx;
      ctx.drawImage(image, from, 0, slice * sourcePerPx, image.height, x + i * slice, 0, slice, height);
    }
    ctx.globalAlpha = 1;
    const rest = w - fadePx;
    ctx.drawImage(image, fadePx * sourcePerPx, 0, rest * sourcePerPx, image.height, x + fadePx, 0, rest, height);
  }

  function drawAxis(t, nowX, width, height, perSecond) {
    ctx.fillStyle = "rgba(231, 232, 238, 0.55)";
    ctx.font = "10px system-ui, sans-serif";
    ctx.textBaseline = "bottom";
    const first = Math.ceil(t - nowX / perSecond);
    const last = Math.floor(t + (width - nowX) / perSecond);
    for (let s = first; s <= last; s++) {
      const x = nowX + (s - t) * perSecond;
      const major = s % 5 === 0;
      ctx.fillRect(x, height - (major ? 8 : 4), 1, major ? 8 : 4);
      if (major) {
        const offset = Math.round(s - t);
        if (offset !== 0) ctx.fillText(`${offset > 0 ? "+" : ""}${offset}s`, x + 3, height - 9);
      }
    }
  }

  // ------------------------------------------------------------------ text on the page

  function renderStatus() {
    const status = state.status;
    if (!status) return;
    const t = playhead();
    const segments = orderedSegments();
    const heard = heardSegment(t, segments);
    const playing = heard || status;
    setText($("prompt-a"), playing.prompt_a);
    setText($("prompt-b"), playing.prompt_b);
    const walking = playing.prompt_a === playing.prompt_b;
    $("prompt-to").hidden = walking;
    setText($("alpha-label"), walking ? "Seed walk" : "Transition");
    const seeds = playing.seed_a === playing.seed_b
      ? `seed ${playing.seed_a}`
      : `seed ${playing.seed_a} → ${playing.seed_b}`;
    setText($("seeds"), playing.seed_a === undefined ? "" : seeds);
    const alpha = Number(playing.alpha) || 0;
    const progress = $("alpha");
    progress.value = alpha;
    const percent = `${Math.round(alpha * 100)}%`;
    setText(progress, percent);
    setText($("alpha-text"), percent);
    if (heard) setText($("clip"), `#${heard.index}${heard.loop ? " (loop)" : ""}`);
    else setText($("clip"), status.clip === null ? "–" : `#${status.clip}`);

    const ahead = $("ahead");
    setText(ahead, formatSeconds(status.ahead_s));
    ahead.classList.toggle("warn", status.ahead_s < 1);
    const rtf = $("rtf");
    setText(rtf, Number.isFinite(status.real_time_factor) ? `×${status.real_time_factor.toFixed(2)}` : "–");
    rtf.classList.toggle("warn", status.behind);
    const counts = status.listeners || {};
    const total = Object.values(counts).reduce((sum, n) => sum + n, 0);
    setText($("listeners"), String(total));
    $("listeners").title = Object.entries(counts).map(([name, n]) => `${name}: ${n}`).join(", ");

    $("behind").hidden = !status.behind;
    if (state.announced.behind !== null && state.announced.behind !== status.behind) {
      announce(status.behind
        ? "The model is slower than real time: looping the last clip."
        : "The model has caught up.");
    }
    state.announced.behind = status.behind;

    const prompts = `${playing.prompt_a} → ${playing.prompt_b}`;
    if (state.announced.prompts !== null && state.announced.prompts !== prompts && !status.behind) {
      announce(`Now playing: ${playing.prompt_a}, moving to ${playing.prompt_b}`);
    }
    state.announced.prompts = prompts;

    if ("mediaSession" in navigator && window.MediaMetadata) {
      const title = playing.prompt_a === playing.prompt_b ? playing.prompt_a : prompts;
      const metadata = navigator.mediaSession.metadata;
      if (!metadata || metadata.title !== title) {
        navigator.mediaSession.metadata = new MediaMetadata({ title, artist: "riffstream" });
      }
    }

    canvas.dataset.clips = String(state.drawn || 0);
    renderQueue(t, segments, heard);
    renderButton();
  }

  function renderQueue(t = playhead(), segments = orderedSegments(), heard = heardSegment(t, segments)) {
    const status = state.status;
    const items = [];
    const seen = new Set();
    let target = heard ? heard.prompt_b : status ? status.prompt_b : null;
    for (const segment of segments) {
      if (segment.start <= t || segment.prompt_b === target) continue;
      target = segment.prompt_b;
      if (!seen.has(target)) items.push({ text: target, when: `in ${Math.max(1, Math.round(segment.start - t))} s` });
      seen.add(target);
    }
    const queued = status ? status.queued : [];
    const waiting = status && status.steer === "now" ? "turning now" : "queued";
    for (const text of queued) {
      if (seen.has(text)) continue;
      const soon = items.length === 0 && status.heard_in_s !== null && status.heard_in_s !== undefined;
      items.push({ text, when: soon ? `in ${Math.max(1, Math.round(status.heard_in_s))} s` : waiting });
      seen.add(text);
    }
    const now = performance.now();
    state.pending = state.pending.filter((p) => now - p.at < 30000);
    for (const p of state.pending) {
      if (!seen.has(p.text)) items.push({ text: p.text, when: waiting });
    }

    const list = $("queue");
    const key = JSON.stringify(items);
    if (state.queueKey !== key) {
      state.queueKey = key;
      list.replaceChildren(
        ...items.map((item) => {
          const li = document.createElement("li");
          li.textContent = item.text;
          const when = document.createElement("span");
          when.className = "when";
          when.textContent = `(${item.when})`;
          li.append(when);
          return li;
        }),
      );
    }
    $("queue-empty").hidden = items.length > 0;
  }

  // ------------------------------------------------------------------ keyboard

  document.addEventListener("keydown", (event) => {
    if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    const typing = target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement
      || target.isContentEditable;
    if (typing) return;
    event.preventDefault();
    $("prompt").focus();
  });

  // ------------------------------------------------------------------ start

  // For programs driving the page (and its browser test): read-only views of what it knows.
  window.riffstream = {
    listenerId,
    playhead,
    clips: () => orderedSegments().map((segment) => ({ ...segment })),
    get listenerStart() {
      return state.listenerStart;
    },
    get clipsDrawn() {
      return state.drawn || 0;
    },
  };

  connectEvents();
  setInterval(renderStatus, 250);
  requestAnimationFrame(draw);
})();
