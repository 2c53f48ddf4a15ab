// Loads the demo daemon's pages in headless Chromium at phone and desktop
// widths and checks that the server-made SVG charts rendered: every chart has
// a real size on screen, drawn marks and a text alternative; the page does
// not scroll sideways on a 375-px phone. Saves full-page screenshots.
//
// Usage: node check.mjs BASE_URL OUT_DIR   (run.sh starts the daemon)
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const [base, outDir] = process.argv.slice(2);
if (!base || !outDir) {
  console.error('usage: node check.mjs BASE_URL OUT_DIR');
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const failures = [];
const check = (ok, what) => {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures.push(what);
};

async function charts(page) {
  return page.$$eval('figure svg', (svgs) => svgs.map((svg) => {
    const box = svg.getBoundingClientRect();
    const title = svg.querySelector('title');
    return {
      title: title ? title.textContent : '',
      width: box.width,
      height: box.height,
      marks: svg.querySelectorAll('polyline, circle, rect, line, path, polygon').length,
      labelled: Boolean(svg.getAttribute('aria-labelledby') || svg.getAttribute('aria-label')),
      // The smallest text as drawn on screen: its font size in the
      // drawing's units times the drawing's scale.
      minText: Math.min(...[...svg.querySelectorAll('text')].map((t) =>
        parseFloat(getComputedStyle(t).fontSize) * svg.getScreenCTM().a)),
    };
  }));
}

for (const [width, height, name] of [[375, 812, 'phone'], [1280, 900, 'desktop']]) {
  const context = await browser.newContext({ viewport: { width, height } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('requestfailed', (r) => errors.push(`request failed: ${r.url()}`));

  const response = await page.goto(`${base}/trials/1`, { waitUntil: 'load' });
  check(response && response.status() === 200, `${name}: /trials/1 answers 200`);
  const found = await charts(page);
  check(found.length >= 4, `${name}: ${found.length} charts on the trial page (outcome, counterfactual, effect, probability)`);
  for (const c of found) {
    check(c.width >= 200 && c.height >= 60 && c.marks >= 5 && c.labelled && c.title.length > 0,
      `${name}: chart "${c.title}" rendered ${Math.round(c.width)}x${Math.round(c.height)} px with ${c.marks} marks`);
    check(c.minText >= 10, `${name}: chart "${c.title}" text at least 10 px (smallest ${c.minText.toFixed(1)} px)`);
  }
  const days = await page.$$eval('.cal span', (s) => s.length);
  check(days > 0, `${name}: calendar shows ${days} days`);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 1, `${name}: no sideways scrolling (overflow ${overflow} px)`);
  const external = await page.$$eval('script[src], link[href], img[src]', (els) =>
    els.map((e) => e.src || e.href).filter((u) => !u.startsWith(location.origin)));
  check(external.length === 0, `${name}: nothing loaded from outside (${external.join(', ')})`);
  check(errors.length === 0, `${name}: no page errors ${errors.join('; ')}`);
  await page.screenshot({ path: `${outDir}/trial-${name}.png`, fullPage: true });

  await page.goto(`${base}/proposals`, { waitUntil: 'load' });
  const graphs = await charts(page);
  check(graphs.length >= 1 && graphs.every((g) => g.width >= 200 && g.marks >= 4),
    `${name}: proposals page draws ${graphs.length} causal graph(s)`);
  await page.screenshot({ path: `${outDir}/proposals-${name}.png`, fullPage: true });

  await page.goto(`${base}/hypotheses`, { waitUntil: 'load' });
  const askBox = await page.$$eval('form[action="/hypotheses/ask"] input[name="question"]', (i) => i.length);
  check(askBox === 1, `${name}: the Ask page has its question box`);
  const askOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(askOverflow <= 1, `${name}: the Ask page does not scroll sideways (overflow ${askOverflow} px)`);
  await page.screenshot({ path: `${outDir}/hypotheses-${name}.png`, fullPage: true });

  await page.goto(`${base}/`, { waitUntil: 'load' });
  const overviewOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overviewOverflow <= 1, `${name}: overview does not scroll sideways (overflow ${overviewOverflow} px)`);
  // Phone first: today's card is the first thing under the heading, whole
  // in the first screen, with its rating form.
  const today = await page.evaluate(() => {
    const card = document.querySelector('section.today-card');
    if (!card) return null;
    const first = document.querySelector('main section, body section');
    const box = card.getBoundingClientRect();
    return { first: first === card, bottom: box.bottom, height: window.innerHeight,
             form: !!card.querySelector('select[name="rating"]') || /Today's answer:/.test(card.textContent) };
  });
  check(today !== null && today.first, `${name}: the Today card comes first on the overview`);
  check(today !== null && today.bottom <= today.height && today.form,
    `${name}: the Today card fits the first screen with its rating (bottom ${today && Math.round(today.bottom)} of ${today && today.height} px)`);
  // Tables become cards on a phone (a row a box, each value named); rows on
  // a desktop.
  const tables = await page.$$eval('table.cards', (ts) => ts.map((t) => {
    const row = t.querySelector('tr:not(.head)');
    const cell = row && row.querySelector('td');
    return { rows: getComputedStyle(t.querySelector('tr.head')).display,
             cell: cell ? getComputedStyle(cell).display : null,
             label: cell ? getComputedStyle(cell, '::before').content : null };
  }));
  const asCards = tables.filter((t) => t.rows === 'none' && t.cell === 'block' && /:/.test(t.label || '')).length;
  if (name === 'phone') {
    check(tables.length >= 4 && asCards === tables.filter((t) => t.cell).length,
      `${name}: the overview's ${tables.length} tables are cards (${asCards} with rows)`);
  } else {
    check(tables.length >= 4 && asCards === 0, `${name}: the overview's tables are tables`);
  }
  await page.screenshot({ path: `${outDir}/overview-${name}.png`, fullPage: true });
  await context.close();
}

await browser.close();
if (failures.length) {
  console.error(`${failures.length} browser check(s) failed`);
  process.exit(1);
}
console.log('browser checks passed');
