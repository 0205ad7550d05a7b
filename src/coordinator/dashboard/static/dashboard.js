// pacpool dashboard: keeps a page's live part current. The server renders everything; this
// script only listens to the pool's server-sent events and, on a change, fetches the same
// page's live part again (`data-fragment`) and swaps it in. Without JavaScript the pages
// work as plain HTML (reload to update). No dependencies, no build step.
(function () {
  'use strict';
  var live = document.getElementById('live');
  if (!live || !window.EventSource || !window.fetch) {
    return;
  }
  var status = document.getElementById('live-status');
  var source = live.getAttribute('data-events');
  var fragment = live.getAttribute('data-fragment');
  var busy = false;
  var again = false;
  var timer = null;

  function say(text) {
    if (status) {
      status.textContent = text;
    }
  }

  function refresh() {
    timer = null;
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    fetch(fragment, { credentials: 'same-origin', cache: 'no-store' })
      .then(function (r) {
        if (r.redirected || r.status === 401) {
          // The session ended: the full page shows the login form.
          window.location.reload();
          throw new Error('logged out');
        }
        if (!r.ok) {
          throw new Error('HTTP ' + r.status);
        }
        return r.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        say('live');
      })
      .catch(function () {
        say('live updates paused: reload the page');
      })
      .then(function () {
        busy = false;
        if (again) {
          again = false;
          schedule();
        }
      });
  }

  // Changes come in bursts (a new target changes every endpoint): refresh at most every
  // 100 ms, and once more after a refresh that was running when a change came.
  function schedule() {
    if (timer === null) {
      timer = window.setTimeout(refresh, 100);
    }
  }

  var events = new EventSource(source);
  events.addEventListener('change', schedule);
  events.onopen = function () {
    say('live');
    // Whatever changed between rendering the page and subscribing.
    schedule();
  };
  events.onerror = function () {
    if (events.readyState === EventSource.CLOSED) {
      // Refused rather than dropped (the session ended: the answer was the login page):
      // reloading shows why.
      window.location.reload();
      return;
    }
    say('reconnecting…');
  };
})();
