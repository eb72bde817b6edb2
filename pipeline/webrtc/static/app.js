// The page: sends the chosen camera and microphone, plays what comes back, shows the analytics.
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const latencies = []; // [time ms, end-to-end ms] over the last 10 s, for the sparkline
let pc = null;
let channel = null;
let lastMessageAt = 0;
let lastAvatarLine = null; // the avatar's line being spoken, as last shown
const SILENT_MS = 5000; // connected but no analytics this long: the server is gone

setInterval(() => {
  if (pc && pc.connectionState === "connected" && lastMessageAt && performance.now() - lastMessageAt > SILENT_MS) {
    setState("The server stopped answering; the session has ended.");
    stop();
  }
}, 1000);

async function listDevices() {
  // Labels are only shown once the page may use the devices; ask once, then list.
  try {
    const probe = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
    probe.getTracks().forEach((t) => t.stop());
  } catch (err) {
    setState(`No camera or microphone: ${err.message}`);
  }
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [kind, select] of [["videoinput", $("camera")], ["audioinput", $("microphone")]]) {
    select.innerHTML = "";
    devices.filter((d) => d.kind === kind).forEach((d, i) => {
      select.add(new Option(d.label || `${kind} ${i + 1}`, d.deviceId));
    });
    if (kind === "audioinput") select.add(new Option("none", ""));
  }
}

function setState(text) {
  $("state").textContent = text;
}

async function start() {
  $("start").disabled = true;
  const audioId = $("microphone").value;
  const media = await navigator.mediaDevices.getUserMedia({
    video: { deviceId: $("camera").value ? { exact: $("camera").value } : undefined, width: 640, height: 480 },
    // The avatar's voice from the speakers must not be heard as the user.
    audio: audioId
      ? { deviceId: { exact: audioId }, echoCancellation: true, noiseSuppression: true, autoGainControl: true }
      : false,
  });
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const ice = await fetch("/api/ice", { headers });
  const iceBody = await ice.json();
  if (!ice.ok) {
    media.getTracks().forEach((track) => track.stop());
    setState(`The server said no: ${iceBody.error}`);
    $("start").disabled = false;
    return;
  }
  // The STUN/TURN servers the server was started with (none: both ends must see each other).
  pc = new RTCPeerConnection({ iceServers: iceBody.iceServers });
  media.getTracks().forEach((track) => pc.addTrack(track, media));
  if (!audioId) pc.addTransceiver("audio", { direction: "recvonly" }); // still hear the avatar
  const shown = new MediaStream();
  pc.ontrack = (event) => {
    shown.addTrack(event.track);
    $("video").srcObject = shown;
  };
  pc.onconnectionstatechange = () => {
    setState(`Connection: ${pc.connectionState}`);
    if (["failed", "closed"].includes(pc.connectionState)) stop();
  };
  channel = pc.createDataChannel("analytics");
  channel.onmessage = (event) => show(JSON.parse(event.data));
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
  });
  const answer = await fetch("/offer", {
    method: "POST",
    headers,
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
  });
  const body = await answer.json();
  if (!answer.ok) {
    setState(`The server said no: ${body.error}`);
    stop();
    return;
  }
  await pc.setRemoteDescription(body);
  $("stop").disabled = false;
}

function stop() {
  lastMessageAt = 0;
  if (pc) {
    pc.getSenders().forEach((s) => s.track && s.track.stop());
    pc.close();
  }
  pc = null;
  channel = null;
  $("start").disabled = false;
  $("stop").disabled = true;
}

function show(message) {
  if (message.type === "ack" || message.type === "error") {
    if (message.type === "error") setState(`Command refused: ${message.error}`);
    return;
  }
  lastMessageAt = performance.now();
  window.lastAnalytics = message; // for tests and the console
  $("fps").textContent = message.fps !== undefined ? message.fps.toFixed(1) : "–";
  $("latency").textContent = `${message.latency_ms.toFixed(1)} ms`;
  $("rung").textContent = (message.quality && message.quality.rung) || "full";
  const voice = message.voice || {};
  const who = [voice.user_speaking && "you", voice.avatar_speaking && "avatar"].filter(Boolean);
  $("speaking").textContent = who.length ? who.join(" and ") : "nobody";
  const faces = (message.emotion && message.emotion.faces) || [];
  $("faces").innerHTML = "";
  for (const face of faces) {
    const li = document.createElement("li");
    const p = face.label && face.probs ? ` (${Math.round(face.probs[face.label] * 100)}%)` : "";
    li.textContent = `face ${face.track}: ${face.label || "…"}${p}`;
    $("faces").appendChild(li);
  }
  for (const event of message.events || []) {
    const li = document.createElement("li");
    li.textContent = `${event.stage}: ${event.type}${event.text ? `: ${event.text}` : ""}`;
    $("events").prepend(li);
    if (event.type === "user_said") addToTranscript("you", event.text); // each utterance comes once
  }
  if (voice.text && voice.text !== lastAvatarLine) addToTranscript("avatar", voice.text);
  lastAvatarLine = voice.text || null;
  // What the user is saying, as far as it has been heard: one line under the transcript.
  $("partial").textContent = voice.user_speaking && voice.partial ? `you: ${voice.partial}…` : "";
  const now = performance.now();
  latencies.push([now, message.latency_ms]);
  while (latencies.length && latencies[0][0] < now - 10000) latencies.shift();
  drawSparkline();
}

function addToTranscript(who, text) {
  const li = document.createElement("li");
  li.className = who;
  li.textContent = `${who}: ${text}`;
  $("transcript").appendChild(li);
  li.scrollIntoView({ block: "nearest" });
}

function drawSparkline() {
  const canvas = $("sparkline");
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  if (latencies.length < 2) return;
  const top = Math.max(60, ...latencies.map((p) => p[1]));
  const t0 = latencies[0][0];
  const span = Math.max(1, latencies[latencies.length - 1][0] - t0);
  g.strokeStyle = "#7fb8ff";
  g.beginPath();
  latencies.forEach(([t, ms], i) => {
    const x = ((t - t0) / span) * canvas.width;
    const y = canvas.height - (ms / top) * (canvas.height - 4) - 2;
    i ? g.lineTo(x, y) : g.moveTo(x, y);
  });
  g.stroke();
}

function send(command) {
  if (channel && channel.readyState === "open") channel.send(JSON.stringify(command));
}

$("start").onclick = () => start().catch((err) => { setState(`Could not start: ${err.message}`); stop(); });
$("stop").onclick = stop;
$("say-form").onsubmit = (event) => {
  event.preventDefault();
  send({ type: "say", text: $("say").value });
  $("say").value = "";
};
$("layout").onchange = () => send({ type: "layout", layout: $("layout").value });
listDevices();
