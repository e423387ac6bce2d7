// End-to-end test of the demo page in Debian's Chromium, driven by playwright-core:
//
//   node web/tests/e2e.mjs --url http://127.0.0.1:PORT/ --expected target/e2e/expected.json \
//     [--screenshot target/e2e/caption.png] [--chromium /usr/bin/chromium] [--timeout-s 600]
//
// The page at --url is the demo site with a model of the tiny fixture under model/. The expected
// caption, its image and its token count come from --expected: a transformers case of the fixture
// (tests/fixtures/tiny/expected/*.json, for the dense model) or, for a compressed model, the same
// case with the CPU reference's ids and text (`"expected_by": "cpu-reference"`, written by
// `cargo xtask test` for the demo's default recipe):
//   1. with WebGPU: the model loads, the photo goes in through the file input, the streamed caption
//      equals the expected text exactly; a screenshot of it is saved;
//   2. a reload reports that the model was loaded from the cache;
//   3. Stop in the middle of a long caption stops it, so does Stop right after Caption (while the
//      image and the prompt are processed), and the model still captions correctly;
//   4. without --enable-unsafe-webgpu the page explains that WebGPU is missing;
//   and the package decodes images to Pillow's pixels (an EXIF-rotated photo upright, CMYK JPEG).
// Each check prints one line; any failure exits with status 1 and says what differed.

import { readFileSync, mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    expected: { type: 'string' },
    screenshot: { type: 'string' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
    'timeout-s': { type: 'string', default: '600' },
  },
});
if (!args.url || !args.expected) {
  console.error('usage: node e2e.mjs --url <demo site> --expected <fixture json> [--screenshot <png>]');
  process.exit(2);
}

const expected = JSON.parse(readFileSync(args.expected, 'utf8'));
const imagePath = resolve(dirname(args.expected), expected.image);
const fixtureTokens = expected.max_new_tokens;
// Whose text the caption must equal (for the check lines).
const source = expected.expected_by === 'cpu-reference' ? "the CPU reference's" : "transformers'";
// The generous bound for one load or one generation: SwiftShader (CPU WebGPU) is slow.
const timeout = Number(args['timeout-s']) * 1000;
// Stop is pressed during a caption this long; the model must not reach it first.
const LONG_CAPTION = 4096;

const COMMON_ARGS = ['--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--no-sandbox'];

let passed = 0;
function ok(what) {
  passed++;
  console.log(`e2e: ok ${passed} - ${what}`);
}
function check(condition, what, detail) {
  if (!condition) throw new Error(`${what}: ${detail}`);
  ok(what);
}

function launch(webgpu) {
  return chromium.launch({
    executablePath: args.chromium,
    headless: true,
    args: webgpu ? ['--enable-unsafe-webgpu', ...COMMON_ARGS] : COMMON_ARGS,
  });
}

/** A fresh page whose console errors and uncaught exceptions are echoed (they explain failures). */
async function openPage(browser) {
  const page = await browser.newPage({ viewport: { width: 1000, height: 900 } });
  page.setDefaultTimeout(timeout);
  page.on('console', (m) => m.type() === 'error' && console.error(`  [page console] ${m.text()} (${m.location().url})`));
  page.on('pageerror', (e) => console.error(`  [page error] ${e.message}`));
  return page;
}

const text = (page, selector) => page.locator(selector).textContent();

/** Wait for the load to end and return the status line; fail if it did not end in "Model ready". */
async function waitLoaded(page) {
  await page.waitForFunction(() => {
    const status = document.getElementById('load-status').textContent;
    return /Model ready|Could not load/.test(status) || !document.getElementById('no-webgpu').hidden;
  });
  const status = await text(page, '#load-status');
  if (await page.locator('#no-webgpu').isVisible()) {
    throw new Error(`the page says WebGPU is missing: ${await text(page, '#no-webgpu-detail')}`);
  }
  if (!status.includes('Model ready')) throw new Error(`the model did not load: ${status}`);
  return status;
}

/** Fill in the token limit and press Caption. */
async function startCaption(page, maxNewTokens) {
  await page.fill('#max-tokens', String(maxNewTokens));
  // Cleared so that waitRunEnded cannot mistake the previous run's "Done." for this one's.
  await page.$eval('#run-status', (el) => { el.textContent = ''; });
  await page.click('#run');
}

/** Wait until the run has ended ("Done.", "Stopped." or an error); returns that status. */
async function waitRunEnded(page) {
  await page.waitForFunction(() => {
    const status = document.getElementById('run-status').textContent;
    return status !== '' && !status.endsWith('…') && !document.getElementById('caption').classList.contains('streaming');
  });
  return text(page, '#run-status');
}

/** Caption the fixture's image with its token count and compare with the expected text. */
async function captionMatches(page, label) {
  await startCaption(page, fixtureTokens);
  const status = await waitRunEnded(page);
  check(status === 'Done.', `${label}: the caption finished`, `run status "${status}"`);
  const caption = await text(page, '#caption');
  const want = expected.generated_text_skip_special;
  check(caption === want, `${label}: the caption equals ${source} text`,
    `\n  got:      ${JSON.stringify(caption)}\n  expected: ${JSON.stringify(want)}`);
  const tokens = await text(page, '#stat-tokens');
  const wantTokens = `${expected.num_prompt_tokens} in · ${expected.generated_ids.length} out`;
  check(tokens === wantTokens, `${label}: the stats count the tokens`, `"${tokens}", expected "${wantTokens}"`);
}

/**
 * The package's image decoding gives Pillow's pixels (crates/processor/tests/data: the files and
 * the digests of Pillow's RGB): a photo with an EXIF orientation upright, as exif_transpose
 * turns it, and CMYK, 4:2:0 and grey JPEGs exactly as Pillow decodes them.
 */
async function decodesAsPillow(page) {
  const data = new URL('../../crates/processor/tests/data/', import.meta.url);
  const reference = JSON.parse(readFileSync(new URL('reference.json', data), 'utf8')).decode;
  for (const file of ['exif6_upright.png', 'exif6_upright.jpg', 'cmyk.jpg', 'q90_420.jpg', 'grey.jpg']) {
    const want = reference.find((c) => c.file === file);
    const bytes = [...readFileSync(new URL(file, data))];
    const type = file.endsWith('.png') ? 'image/png' : 'image/jpeg';
    const got = await page.evaluate(async ([bytes, type]) => {
      const { toRGBA } = await import('./pocketvlm/src/image.js');
      const { rgba, width, height } = await toRGBA(new Blob([new Uint8Array(bytes)], { type }));
      const rgb = rgba.filter((_, i) => i % 4 !== 3);
      const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', rgb));
      return { width, height, sha256: [...digest].map((b) => b.toString(16).padStart(2, '0')).join('') };
    }, [bytes, type]);
    check(got.width === want.size[0] && got.height === want.size[1] && got.sha256 === want.rgb_sha256,
      `${file} decodes to Pillow's pixels${want.options === 'load_image' ? ' (upright, as exif_transpose)' : ''}`,
      `${got.width}x${got.height} ${got.sha256}, Pillow ${want.size.join('x')} ${want.rgb_sha256}`);
  }
}

/**
 * A model larger than `memoryBudget` rejects with OutOfMemoryError and an unknown `kvCache` with
 * TypeError (in the worker, as the demo runs it); `prepare: false` skips the load's 'prepare'
 * phase, which a load has by default; the same page then loads it keeping the latent cache's
 * keys (`kvCache: 'latent-keys'`) and captions as the CPU reference, which rebuilds them every
 * step.
 */
async function loadOptions(page) {
  const started = Date.now();
  const got = await page.evaluate(async ([bytes, prompt, maxNewTokens]) => {
    const { PocketVLM } = await import('./pocketvlm/src/index.js');
    const name = (e) => e.name;
    const refused = await PocketVLM.load('./model/', { memoryBudget: 1_000_000 }).then(() => 'loaded', name);
    const unknown = await PocketVLM.load('./model/', { kvCache: 'sideways' }).then(() => 'loaded', name);
    const phases = (into) => (p) => { if (into.at(-1) !== p.phase) into.push(p.phase); };
    const lazy = [];
    await (await PocketVLM.load('./model/', { prepare: false, onProgress: phases(lazy) })).dispose();
    const prepared = [];
    const model = await PocketVLM.load('./model/', { kvCache: 'latent-keys', onProgress: phases(prepared) });
    const image = new Blob([new Uint8Array(bytes)]);
    let text = '';
    for await (const piece of await model.caption(image, { prompt, maxNewTokens })) text += piece;
    const { kvCache } = model.info;
    await model.dispose();
    return { refused, unknown, kvCache, text, lazy: lazy.slice(-2).join(','), prepared: prepared.slice(-3).join(',') };
  }, [[...readFileSync(imagePath)], await page.inputValue('#prompt'), fixtureTokens]);
  check(got.refused === 'OutOfMemoryError', 'a model over memoryBudget rejects with OutOfMemoryError', got.refused);
  check(got.unknown === 'TypeError', 'an unknown kvCache rejects with TypeError', got.unknown);
  check(got.lazy === 'upload,ready', 'a load with prepare: false compiles no kernel ahead', got.lazy);
  check(got.prepared === 'upload,prepare,ready', 'a load compiles a caption\'s kernels ahead by default',
    got.prepared);
  check(got.kvCache === 'latent-keys', 'the page then loads it keeping the latent cache\'s keys', got.kvCache);
  check(got.text === expected.generated_text_skip_special, `and captions ${source} text`, JSON.stringify(got.text));
  console.log(`  (refused twice, loaded twice and captioned in ${((Date.now() - started) / 1000).toFixed(1)} s)`);
}

async function withWebGPU() {
  const browser = await launch(true);
  try {
    const page = await openPage(browser);
    const started = Date.now();
    await page.goto(args.url);

    // 1. First load (downloaded), photo through the file input, the exact caption.
    const status = await waitLoaded(page);
    console.log(`  (the page's first load: ${((Date.now() - started) / 1000).toFixed(1)} s)`);
    check(status.startsWith('Downloaded'), 'first load downloads the model', status);
    const progress = await page.locator('.progress').getAttribute('aria-valuenow');
    check(progress === '100', 'the progress bar reached 100%', `aria-valuenow ${progress}`);
    await decodesAsPillow(page);
    await loadOptions(page);
    console.log(`  (loaded in ${((Date.now() - started) / 1000).toFixed(1)} s: ${status})`);
    await page.setInputFiles('#file-input', imagePath);
    // The preview has a size only once the browser has decoded the photo: wait for it rather than race it.
    const previewed = await page.locator('#preview').waitFor({ state: 'visible', timeout: 10_000 }).then(() => true, () => false);
    check(previewed, 'the photo from the file input is previewed', 'no preview after 10 s');
    check(await page.inputValue('#prompt') === 'Can you describe this image?', 'the default prompt is the fixture\'s',
      await page.inputValue('#prompt'));
    const t0 = Date.now();
    await captionMatches(page, 'first caption');
    const stats = await page.$$eval('#stats div', (divs) => divs.map((d) => `${d.children[0].textContent}: ${d.children[1].textContent}`));
    console.log(`  (captioned in ${((Date.now() - t0) / 1000).toFixed(1)} s; ${stats.join(', ')})`);
    if (args.screenshot) {
      mkdirSync(dirname(args.screenshot), { recursive: true });
      await page.screenshot({ path: args.screenshot, fullPage: true });
      console.log(`  (screenshot: ${args.screenshot})`);
    }

    // 2. A reload reads the shards from the Cache API.
    await page.reload();
    const cached = await waitLoaded(page);
    check(cached.startsWith('Loaded from cache'), 'the second load reports cache hits', cached);

    // 3. Stop after the first streamed text of a long caption.
    await page.setInputFiles('#file-input', imagePath);
    await startCaption(page, LONG_CAPTION);
    await page.waitForFunction(() => document.getElementById('caption').textContent.length > 0);
    await page.click('#stop');
    const stopped = await waitRunEnded(page);
    check(stopped === 'Stopped.', 'Stop ends the generation', `run status "${stopped}"`);
    const partial = await text(page, '#caption');
    await page.waitForTimeout(1500);
    check(await text(page, '#caption') === partial, 'the caption stops growing', 'it changed after Stop');
    check(await page.isEnabled('#run') && await page.isDisabled('#stop'), 'Caption is enabled again, Stop disabled',
      'button states');
    const out = Number((await text(page, '#stat-tokens')).match(/(\d+) out/)?.[1]);
    check(out > 0 && out < LONG_CAPTION, 'the stats show a stopped generation', `${out} of ${LONG_CAPTION} tokens`);
    console.log(`  (stopped after ${out} tokens: ${JSON.stringify(partial)})`);
    check(expected.generated_text_skip_special.startsWith(partial) || partial.startsWith(expected.generated_text_skip_special),
      `the stopped caption is a prefix of ${source} text`, JSON.stringify(partial));
    // Stop right away: the worker ends the vision tower or the prefill between two parts (or,
    // had they finished, the generation before its first token).
    await startCaption(page, fixtureTokens);
    await page.click('#stop');
    const early = await waitRunEnded(page);
    check(early === 'Stopped.', 'Stop right after Caption ends the run', `run status "${early}"`);
    await captionMatches(page, 'after Stop');
  } finally {
    await browser.close();
  }
}

async function withoutWebGPU() {
  // 4. The same page without --enable-unsafe-webgpu explains what is missing.
  const browser = await launch(false);
  try {
    const page = await openPage(browser);
    await page.goto(args.url);
    const gpu = await page.evaluate(async () => {
      if (!navigator.gpu) return 'navigator.gpu is missing';
      return (await navigator.gpu.requestAdapter()) ? 'an adapter' : 'navigator.gpu without an adapter';
    });
    await page.locator('#no-webgpu').waitFor({ state: 'visible' }).catch(async () => {
      throw new Error(`without WebGPU no explanation is shown; the load status is "${await text(page, '#load-status')}"`);
    });
    const detail = await text(page, '#no-webgpu-detail');
    ok('without WebGPU the page explains that WebGPU is missing');
    check(await page.locator('#app').isHidden(), 'without WebGPU the explanation replaces the app',
      'the app is still shown');
    console.log(`  (this browser: ${gpu}; the page says: ${detail})`);
  } finally {
    await browser.close();
  }
}

const started = Date.now();
try {
  await withWebGPU();
  await withoutWebGPU();
} catch (e) {
  console.error(`e2e: FAILED after ${passed} checks: ${e.message}`);
  console.log(`e2e: ${passed} passed, 1 failed`);
  process.exit(1);
}
console.log(`e2e: ${passed} passed, 0 failed (${((Date.now() - started) / 1000).toFixed(1)} s)`);
