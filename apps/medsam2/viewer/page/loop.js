// The learning loop in the page: labelling progress, "Next study", fine-tuning from the page
// (start, watch, stop), which weights are served, and the learning curve beside the classical
// baselines. Everything comes from GET /medsam2/loop, then from GET /medsam2/events as it changes
// (every open tab shows the loop as it is now); the server refuses what the user may not do.

import { loopEvents, loopState, nextStudy, startFineTune, stopFineTune } from './api.js';

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;

function seconds(s) {
  if (s === null || s === undefined) return '';
  if (s < 60) return `about ${Math.max(5, Math.round(s / 5) * 5)} s`;
  return `about ${Math.round(s / 60)} min`;
}

function servedText(model) {
  const name = model.version?.name ?? model.checkpoint_file ?? '?';
  const preparing = model.preparing ? ` (preparing ${model.preparing.name}: ${model.preparing.stage}; the current weights answer meanwhile)` : '';
  return `Served weights: ${name}${preparing}`;
}

function trainingText(t, model) {
  if (t.status === 'RUNNING' || t.status === 'LOADING') {
    if (!t.epoch) return `Fine-tuning: preparing the studies${t.start_dice !== null && t.start_dice !== undefined ? ` (current weights score held-out Dice ${t.start_dice.toFixed(3)})` : ''}…`;
    const dice = t.val_dice !== null && t.val_dice !== undefined ? `, held-out Dice ${t.val_dice.toFixed(3)}` : '';
    const left = t.seconds_left !== null && t.seconds_left !== undefined ? `, ${seconds(t.seconds_left)} left` : '';
    return `Fine-tuning: epoch ${t.epoch} of ${t.epochs}, loss ${t.train_loss}${dice}${left}.`;
  }
  if (t.status === 'DONE') {
    if (!t.finetune) return 'The last fine-tune did not beat the served weights: they stay.';
    const dice = t.finetune.val_dice !== null && t.finetune.val_dice !== undefined
      ? ` (held-out Dice ${t.finetune.val_dice.toFixed(3)})` : '';
    const served = model?.version?.finetune === t.finetune.number;
    return served ? `Fine-tune ${t.finetune.number} done${dice}: its weights are served.`
      : `Fine-tune ${t.finetune.number} done${dice}: its weights are being prepared; the current ones answer until they are ready.`;
  }
  if (t.status === 'INTERRUPTED') return 'The last fine-tune was stopped before it finished; the weights it had published stay served.';
  if (t.status === 'FAILED') return `The last fine-tune failed: ${t.error || 'see the server log'}`;
  return 'No fine-tune has run yet.';
}

// validation Dice per fine-tune against the number of labelled studies, with the baselines
export function curveSvg(history, running) {
  const width = 250;
  const height = 150;
  const pad = 28;
  const points = history.filter((e) => e.labelled_studies !== undefined);
  const note = running ? `<p class="small">Fine-tune ${running} is running and its best weights so far are served; its point joins the curve when it ends.</p>` : '';
  if (!points.length) return note || '<p class="small">No fine-tune has published weights yet.</p>';
  const maxX = Math.max(...points.map((e) => e.labelled_studies), 1);
  const x = (n) => pad + (n / maxX) * (width - pad - 8);
  const y = (d) => height - pad + 4 - d * (height - pad - 8);
  const series = [
    ['SAM 2 (held-out Dice)', '#4fc3ff', (e) => e.val_dice],
    ['fill the box', '#d8a657', (e) => e.baselines?.fill_box],
    ['Otsu in the box', '#a9b665', (e) => e.baselines?.otsu_box],
  ];
  let svg = `<svg id="curve-svg" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" role="img"`
    + ' aria-label="held-out Dice per fine-tune against labelled studies">'
    + `<line x1="${pad}" y1="${y(0)}" x2="${width - 4}" y2="${y(0)}" stroke="#666"/>`
    + `<line x1="${pad}" y1="${y(0)}" x2="${pad}" y2="${y(1)}" stroke="#666"/>`
    + `<text x="2" y="${y(1) + 4}" fill="#aaa" font-size="9">1.0</text><text x="2" y="${y(0)}" fill="#aaa" font-size="9">0</text>`
    + `<text x="${width / 2}" y="${height - 2}" fill="#aaa" font-size="9" text-anchor="middle">labelled studies (max ${maxX})</text>`;
  series.forEach(([name, colour, value], n) => {
    const pts = points.filter((e) => typeof value(e) === 'number').map((e) => `${x(e.labelled_studies)},${y(value(e))}`);
    if (pts.length > 1) svg += `<polyline points="${pts.join(' ')}" fill="none" stroke="${colour}"/>`;
    for (const p of pts) svg += `<circle class="point-${n}" cx="${p.split(',')[0]}" cy="${p.split(',')[1]}" r="3" fill="${colour}"/>`;
    svg += `<text x="${pad + 4}" y="${12 + 10 * n}" fill="${colour}" font-size="9">${name}</text>`;
  });
  return `${svg}</svg>${note}`;
}

export class LearningLoop {
  constructor({ openStudy, onState }) {
    this.openStudy = openStudy;
    this.onState = onState;
    this.state = null;
    this.timer = null;
    $('next-study').addEventListener('click', () => this.next());
    $('train').addEventListener('click', () => this.train());
    $('train-stop').addEventListener('click', () => this.stop());
  }

  // every change of the loop, pushed by the server; a poll stands in while the stream is down
  follow() {
    this.unfollow?.();
    this.unfollow = loopEvents((state) => this.render(state), () => this.refresh().catch(() => {}));
  }

  async refresh() {
    return this.render(await loopState());
  }

  render(state) {
    this.state = state;
    const s = this.state;
    const { studies, labelled } = s.progress;
    $('progress-text').textContent = `${labelled} of ${studies} studies labelled`;
    $('progress-bar').value = labelled;
    $('progress-bar').max = Math.max(studies, 1);
    $('model-version').textContent = servedText(s.model);
    const t = s.training;
    // just asked for: the child process has not written its first status yet
    const pending = this.askedAt && (t.started ?? 0) < this.askedAt && Date.now() / 1000 - this.askedAt < 120;
    if (!pending) this.askedAt = null;
    const running = pending || t.status === 'RUNNING' || t.status === 'LOADING';
    $('train').hidden = !s.can.train;
    $('train-stop').hidden = !s.can.train || !running;
    $('train').disabled = running || Boolean(t.cannot_start);
    $('train').title = t.cannot_start || '';
    $('training-status').textContent = pending ? 'Fine-tuning: starting…'
      : (t.cannot_start && !running ? `Fine-tuning cannot start: ${t.cannot_start}` : trainingText(t, s.model));
    $('curve').innerHTML = curveSvg(s.history, s.model.unrecorded_finetune);
    this.onState(s);
    clearTimeout(this.timer);
    // just asked for and not yet reported: look again soon (the stream reports the rest)
    if (pending) this.timer = setTimeout(() => this.refresh().catch(() => {}), POLL_MS);
    return s;
  }

  async next() {
    const strategy = this.state?.strategy || 'uncertainty';
    const chosen = await nextStudy(strategy);
    if (!chosen) { $('training-status').textContent = 'Every study is labelled.'; return; }
    await this.openStudy(chosen);
  }

  async train() {
    try {
      this.askedAt = Date.now() / 1000 - 2;
      await startFineTune(this.state.trainer);
    } catch (error) {
      this.askedAt = null;
      $('training-status').textContent = `Fine-tuning did not start: ${error.message}`;
      return;
    }
    await this.refresh();
  }

  async stop() {
    try {
      await stopFineTune();
    } catch (error) {
      $('training-status').textContent = `The fine-tune could not be stopped: ${error.message}`;
      return;
    }
    await this.refresh();
  }
}
