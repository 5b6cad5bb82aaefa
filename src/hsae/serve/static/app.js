// The explorer's pages: upload, submit an edit, long-poll its job, show the images.
// document.body.dataset.editState mirrors the last edit's state (queued, running, done, failed)
// so a browser test can wait for it.
"use strict";

async function api(url, options) {
  const res = await fetch(url, options);
  const body = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
  return body;
}

// Submit one edit and follow it; onStatus(status) on every change; resolves with the job id.
async function runEdit(request, onStatus) {
  let st = await api("/api/edit", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(request),
  });
  onStatus(st);
  while (st.state === "queued" || st.state === "running") {
    st = await api(`/api/jobs/${st.job}?wait=20&seen=${encodeURIComponent(st.key)}`);
    onStatus(st);
  }
  if (st.state === "failed") throw new Error(st.message);
  return st.job;
}

function editForm() {
  const form = document.getElementById("edit-form");
  if (!form) return;
  const status = document.getElementById("status");
  const range = document.getElementById("strength-range");
  const number = document.getElementById("strength");
  range.addEventListener("input", () => { number.value = range.value; });
  number.addEventListener("input", () => { range.value = number.value; });

  const upload = document.getElementById("upload");
  const upStatus = document.getElementById("upload-status");
  upload.addEventListener("change", async () => {
    const file = upload.files[0];
    if (!file) return;
    upStatus.textContent = "uploading…";
    try {
      const res = await api("/api/upload", {
        method: "POST",
        headers: { "X-Filename": encodeURIComponent(file.name) },
        body: file,
      });
      const opt = new Option(`uploaded: ${res.name}`, res.image, true, true);
      document.getElementById("image").prepend(opt);
      upStatus.textContent = `uploaded ${res.name}`;
      document.body.dataset.upload = "done";
    } catch (e) {
      upStatus.textContent = e.message;
      document.body.dataset.upload = "failed";
    }
  });

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    document.body.dataset.editState = "submitting";
    try {
      const job = await runEdit(data, (st) => {
        status.textContent = st.message;
        document.body.dataset.editState = st.state;
      });
      showResult(job);
    } catch (e) {
      status.textContent = e.message;
      document.body.dataset.editState = "failed";
    }
  });
}

async function showResult(job) {
  const base = `/api/jobs/${job}`;
  const loads = ["input", "unedited", "edited", "diff"].map((name) => {
    const img = document.getElementById(`img-${name}`);
    img.src = `${base}/${name}.png`;
    return img.decode();
  });
  const params = await api(`${base}/params.json`);
  await Promise.all(loads);
  document.getElementById("download-png").href = `${base}/edited.png?download=1`;
  document.getElementById("download-json").href = `${base}/params.json?download=1`;
  const px = params.pixel_vs_unedited;
  document.getElementById("facts").textContent =
    `${params.feature.name}, strength ${params.strength} (${params.strength_means}), window ` +
    `${params.window}, ${params.mode}: ${params.delta_neurons} of ${params.n_neurons} neurons ` +
    `of h changed; ‖h̃ − h‖/‖h‖ = ${params.size_first_step.toFixed(3)} at the first step; ` +
    `${(100 * px.changed_frac).toFixed(1)}% of pixels changed, PSNR ${px.psnr_db.toFixed(1)} dB ` +
    `against the unedited resume; ${params.seconds} s.`;
  document.getElementById("command").textContent =
    params.hsae_edit.command || params.hsae_edit.note;
  document.getElementById("result").hidden = false;
  document.body.dataset.resultJob = job;
}

async function cardEdits() {
  const figures = document.querySelectorAll("figure.card-edit");
  let done = 0;
  for (const fig of figures) {
    const status = fig.querySelector(".status");
    try {
      const job = await runEdit(JSON.parse(fig.dataset.request), (st) => {
        status.textContent = st.message;
      });
      const img = fig.querySelector("img");
      img.src = `/api/jobs/${job}/edited.png`;
      await img.decode();
      done += 1;
    } catch (e) {
      status.textContent = e.message;
    }
  }
  document.body.dataset.cardEdits = `${done}/${figures.length}`;
}

editForm();
cardEdits();
