// Upload in place: pick, drop or shoot a photo -> shrink it here -> POST /api/v1/jobs -> long poll -> before/after +
// download. Without JavaScript the same form posts the original to /jobs and the job page refreshes itself.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form) return;
  const api = form.dataset.api;
  const maxBytes = Number(form.dataset.maxBytes);
  const pollMs = Number(form.dataset.pollMs) || 1000;
  const longPollS = 25, queuedWaitS = 5;  // seconds a status request waits for the job's end (the server allows 30)
  const types = ["image/jpeg", "image/png", "image/webp", "image/heic", "image/heif", "image/avif"];
  const limitText = maxBytes >= 1048576 ? `${Math.round(maxBytes / 1048576)} MB` : `${Math.round(maxBytes / 1024)} KB`;
  const $ = (id) => document.getElementById(id);
  const errorBox = $("error"), progress = $("progress"), progressText = $("progress-text"), result = $("result");
  let currentJob = null;
  let photoUrl = null;  // the photo as sent (a blob: URL): the slider's "before"; the server keeps no copy of it

  function forgetPhoto() {
    if (photoUrl) URL.revokeObjectURL(photoUrl);
    photoUrl = null;
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
    progress.hidden = true;
    form.hidden = false;
  }

  function setProgress(text) {
    errorBox.hidden = true;
    form.hidden = true;
    result.hidden = true;
    progress.hidden = false;
    progressText.textContent = text;
  }

  function reset() {
    currentJob = null;
    forgetPhoto();
    form.reset();
    result.hidden = true;
    progress.hidden = true;
    errorBox.hidden = true;
    form.hidden = false;
  }

  async function detailOf(response) {
    try {
      const body = await response.json();
      if (body && typeof body.detail === "string") return body.detail;
    } catch (e) { /* not JSON */ }
    return `The server answered ${response.status}. Please try again.`;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // The service keeps at most data-max-side pixels on the longest side, so a bigger photo is shrunk here first: a
  // 12 MP phone JPEG of 3-12 MB goes up as a few hundred KB, and a 48 MP one over the size limit goes up at all.
  // createImageBitmap applies the EXIF orientation, so the JPEG made here is upright (and carries no EXIF: no
  // location either). Whatever this browser cannot decode (HEIC in Chrome, say) goes up as it is, for the server
  // to decode; so do photos already small enough, and any whose shrunk JPEG would come out no smaller.
  // Read at each upload, not once: a benchmark removes the attribute to measure the page without shrinking.
  const jpegQuality = 0.92;

  function jpegName(name) {
    const stem = (name || "").replace(/\.[^.]*$/, "");
    return (stem || "photo") + ".jpg";
  }

  function encode(canvas) {
    return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", jpegQuality));
  }

  async function shrink(file) {
    const maxSide = Number(form.dataset.maxSide) || 0;
    if (!maxSide || typeof createImageBitmap !== "function") return file;
    let bitmap, small;
    try {
      bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    } catch (e) {
      return file;  // not decodable here: the server decodes it (or explains why not)
    }
    try {
      const scale = maxSide / Math.max(bitmap.width, bitmap.height);
      if (!(scale < 1)) return file;  // small enough already: no needless re-encoding
      const width = Math.max(1, Math.round(bitmap.width * scale));
      const height = Math.max(1, Math.round(bitmap.height * scale));
      try {  // the browser's high-quality resampling; drawImage below is the fallback
        small = await createImageBitmap(bitmap, { resizeWidth: width, resizeHeight: height, resizeQuality: "high" });
      } catch (e) { small = null; }
      const canvas = document.createElement("canvas");
      canvas.width = width;
      canvas.height = height;
      const context = canvas.getContext("2d");
      context.fillStyle = "#fff";  // transparency onto white, as the server flattens it (JPEG has no alpha)
      context.fillRect(0, 0, width, height);
      context.imageSmoothingEnabled = true;
      context.imageSmoothingQuality = "high";
      context.drawImage(small || bitmap, 0, 0, width, height);
      const blob = await encode(canvas);
      canvas.width = canvas.height = 0;  // free its pixels now rather than at the next collection
      if (!blob || blob.size >= file.size) return file;
      return new File([blob], jpegName(file.name), { type: "image/jpeg", lastModified: file.lastModified });
    } catch (e) {
      return file;  // out of memory, say: the original, as without JavaScript
    } finally {
      bitmap.close();
      if (small) small.close();
    }
  }

  async function upload(picked) {
    if (!picked) { showError("Choose a photo first."); return; }
    if (picked.type && picked.type.startsWith("image/") && !types.includes(picked.type)) {
      showError("The file is not a JPEG, PNG, WebP, HEIC or AVIF image.");
      return;
    }
    setProgress("Uploading…");
    const file = await shrink(picked);
    if (file.size > maxBytes) {
      showError(`The photo is larger than ${limitText}; please upload a smaller one.`);
      return;
    }
    forgetPhoto();
    photoUrl = URL.createObjectURL(file);
    const data = new FormData();
    data.append("file", file, file.name || "photo");
    let response;
    try {
      response = await fetch(api, { method: "POST", body: data });
    } catch (e) {
      showError("Could not reach the server. Check your connection and try again.");
      return;
    }
    if (response.status !== 202) {
      let message = await detailOf(response);
      const retry = response.headers.get("Retry-After");
      if (response.status === 503 && retry) message += ` (try again in ${retry} s)`;
      showError(message);
      return;
    }
    const job = await response.json();
    currentJob = job;
    await poll(job);
  }

  // Long poll: GET status_url?wait=S answers as soon as the job ends (or after S seconds with its state), so the
  // result shows the moment it is ready. Polling once every pollMs is the fallback.
  async function poll(job) {
    let failures = 0, longPoll = true, wait = 0;  // the first answer at once: it shows the place in line
    while (currentJob === job) {
      const asked = Date.now(), waited = longPoll && wait > 0;
      let state;
      try {
        const response = await fetch(waited ? `${job.status_url}?wait=${wait}` : job.status_url, { cache: "no-store" });
        if (currentJob !== job) return;  // the user moved on while this request waited
        if (response.status === 404) { showError(await detailOf(response)); return; }
        if (!response.ok) throw new Error(String(response.status));
        state = await response.json();
        failures = 0;
      } catch (e) {
        if (++failures >= 10) { showError("Lost contact with the server. Please try again."); return; }
        if (waited && failures >= 2) longPoll = false;  // e.g. a proxy that cuts long requests: plain polling
        await sleep(pollMs);
        continue;
      }
      if (state.status === "queued") {
        setProgress(state.position ? `Waiting in line: position ${state.position} of ${state.queue_length}.`
                                   : "Waiting in line…");
      } else if (state.status === "started") {
        setProgress("Simpsonizing your photo…");
      } else if (state.status === "failed") {
        showError(state.error || "Something went wrong. Please try again.");
        return;
      } else if (state.status === "finished") {
        showResult(state);
        return;
      }
      // While queued, shorter waits keep the place in line current; the job's end comes at once either way.
      wait = state.status === "queued" ? queuedWaitS : longPollS;
      // Without a long poll (or a server that answered one early without the end), once every pollMs at most.
      const elapsed = Date.now() - asked;
      if ((waited || !longPoll) && elapsed < pollMs) await sleep(pollMs - elapsed);
    }
  }

  // The result: the composite (the page's JPEG copy) under the photo as it was sent, split by a range input (keyboard
  // and touch for free), then each face's crop and drawing. Downloads: the lossless composite and face 1's drawing.
  const slider = $("compare-slider"), compare = $("compare");

  function setSplit() {
    compare.style.setProperty("--split", `${slider.value}%`);
    slider.setAttribute("aria-valuetext", `${slider.value} % your photo, ${100 - slider.value} % drawing`);
  }
  slider.addEventListener("input", setSplit);

  function facePair(state, n) {
    const pair = document.createElement("div");
    pair.className = "pair";
    for (const [url, label, alt] of [[state.input_url, "Before", "as it was cropped"],
                                     [state.result_url, "After", "Simpsonized"]]) {
      const figure = document.createElement("figure"), img = document.createElement("img");
      img.src = `${url}?face=${n}`;
      img.alt = `Face ${n}, ${alt}`;
      const caption = document.createElement("figcaption");
      caption.textContent = `${label} (face ${n})`;
      figure.append(img, caption);
      pair.append(figure);
    }
    return pair;
  }

  function showResult(state) {
    const count = state.face_count || 1;
    $("before-image").src = state.input_url;
    $("after-image").src = state.result_url;
    $("download").href = state.result_url + "?download=1";
    const faces = $("faces");
    while (faces.children.length > 1) faces.lastChild.remove();
    for (let n = 2; n <= count; n++) faces.append(facePair(state, n));
    $("faces-plural").hidden = count < 2;
    const hasComposite = Boolean(state.composite_url);
    $("compare").parentElement.hidden = !hasComposite;
    $("download-composite").hidden = !hasComposite;
    if (hasComposite) {
      $("composite-image").src = state.composite_url + "?format=jpeg";
      $("download-composite").href = state.composite_url + "?download=1";
    }
    const before = $("photo-image");
    const showSlider = hasComposite && Boolean(photoUrl);
    $("compare-before").hidden = $("compare-control").hidden = !showSlider;
    before.onerror = () => { $("compare-before").hidden = $("compare-control").hidden = true; };  // e.g. HEIC
    if (showSlider) before.src = photoUrl;
    slider.value = 50;
    setSplit();
    progress.hidden = true;
    result.hidden = false;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const picked = [...form.querySelectorAll('input[type="file"]')].map((i) => i.files[0]).find(Boolean);
    upload(picked);
  });
  for (const input of form.querySelectorAll('input[type="file"]')) {
    input.addEventListener("change", () => { if (input.files[0]) upload(input.files[0]); });
  }

  const zone = $("drop-zone");
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) upload(file);
  });

  $("again").addEventListener("click", reset);
  $("delete").addEventListener("click", async () => {
    const job = currentJob;
    reset();
    if (job) {
      try { await fetch(job.status_url, { method: "DELETE" }); } catch (e) { /* it expires anyway */ }
    }
  });
})();
