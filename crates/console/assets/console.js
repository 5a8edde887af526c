// The console's one script: live parts of pages, the args check and target suggestions on the
// new-command form. Pages work without it; it only refreshes and helps.
(function () {
  'use strict';

  // Live regions: <div data-live="/console/live/..." data-every="2000"> is re-fetched and
  // replaced while the page is open (the URL carries the page's filters). Skipped while the
  // keyboard focus is inside it, so nothing moves under the user's hand.
  function live(el) {
    var url = el.getAttribute('data-live');
    var every = parseInt(el.getAttribute('data-every'), 10) || 2000;
    var last = null;
    var busy = false;
    function tick() {
      if (busy || document.hidden) { return; }
      if (document.activeElement && document.activeElement !== document.body &&
          el.contains(document.activeElement)) { return; }
      busy = true;
      fetch(url, { credentials: 'same-origin', headers: { 'Accept': 'text/html' } })
        .then(function (r) {
          if (r.status === 401) { window.location.reload(); return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (html) {
          if (html === null || html === last) { return; }
          last = html;
          var doc = new DOMParser().parseFromString(html, 'text/html');
          el.replaceChildren.apply(el, Array.prototype.slice.call(doc.body.childNodes));
          el.setAttribute('data-refreshed', String(Date.now()));
        })
        .catch(function () { /* the next tick tries again */ })
        .then(function () { busy = false; });
    }
    window.setInterval(tick, every);
  }

  // The args of a new command must be a JSON object or array: checked as it is typed, and the
  // form cannot be sent while it is not.
  function argsCheck(args) {
    var out = document.getElementById('args-error');
    function check() {
      var msg = '';
      var text = args.value.trim() === '' ? '{}' : args.value;
      try {
        var v = JSON.parse(text);
        if (v === null || typeof v !== 'object') { msg = 'Args must be a JSON object or array.'; }
      } catch (e) {
        msg = 'Args are not valid JSON: ' + e.message;
      }
      args.setCustomValidity(msg);
      if (out) { out.textContent = msg; }
    }
    args.addEventListener('input', check);
    check();
  }

  // Suggestions of existing groups and agents for the target id, as it is typed.
  function suggest(input) {
    var list = document.getElementById(input.getAttribute('list'));
    var kind = document.getElementById('target_type');
    var timer = null;
    function load() {
      var type = kind ? kind.value : 'group';
      if (type !== 'group' && type !== 'agent') { list.replaceChildren(); return; }
      var url = '/console/suggest?type=' + encodeURIComponent(type) + '&q=' + encodeURIComponent(input.value);
      fetch(url, { credentials: 'same-origin', headers: { 'Accept': 'application/json' } })
        .then(function (r) { return r.ok ? r.json() : []; })
        .then(function (names) {
          var options = names.map(function (n) {
            var o = document.createElement('option');
            o.value = n;
            return o;
          });
          list.replaceChildren.apply(list, options);
        })
        .catch(function () {});
    }
    function soon() { window.clearTimeout(timer); timer = window.setTimeout(load, 200); }
    input.addEventListener('input', soon);
    if (kind) { kind.addEventListener('change', load); }
    load();
  }

  function start() {
    Array.prototype.forEach.call(document.querySelectorAll('[data-live]'), live);
    var args = document.getElementById('args');
    if (args) { argsCheck(args); }
    var target = document.getElementById('target_id');
    if (target && target.getAttribute('list')) { suggest(target); }
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
}());
