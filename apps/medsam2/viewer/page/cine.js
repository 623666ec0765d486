// A study whose third axis is time (a video or cine loop: api.js fetchVolume's frameTimeMs):
// the slider is the frame, Play steps through the frames at the video's own rate and loops, as an
// echo machine shows a loop; a prompt is drawn on the frame shown, so drawing pauses it.

export class Cine {
  // button: Play/Pause; step(): show the next frame
  constructor(button, step) {
    Object.assign(this, { button, step, frameTimeMs: null, timer: null });
    button.addEventListener('click', () => (this.timer ? this.pause() : this.play()));
  }

  get on() {
    return Boolean(this.frameTimeMs);
  }

  get playing() {
    return this.timer !== null;
  }

  // the study opened: a video (its frame time) or not (null)
  open(frameTimeMs) {
    this.pause();
    this.frameTimeMs = frameTimeMs || null;
    this.button.hidden = !this.on;
  }

  play() {
    if (!this.on || this.timer) return;
    this.button.textContent = 'Pause';
    this.timer = setInterval(() => this.step(), Math.max(16, this.frameTimeMs));
  }

  pause() {
    clearInterval(this.timer);
    this.timer = null;
    this.button.textContent = 'Play';
  }

  // where frame k is in the loop, in a clinician's words
  at(k) {
    return this.on ? ` (${((k * this.frameTimeMs) / 1000).toFixed(2)} s)` : '';
  }
}
