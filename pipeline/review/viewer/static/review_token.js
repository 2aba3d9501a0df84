/* micromet viewer: keeps the review token of `micromet view --review` (the ?token= of the link it
   printed) for this browser, and takes it out of the address bar. Review edits send it in the
   X-Micromet-Token header; the server refuses writes without it. */
(function () {
  'use strict';
  var params = new URLSearchParams(window.location.search);
  if (!params.has('token')) {
    return;
  }
  try {
    window.localStorage.setItem('micromet-review-token', params.get('token'));
  } catch (error) {
    return;  // storage disabled: keep the token in the address bar instead
  }
  params.delete('token');
  var query = params.toString();
  window.history.replaceState(null, '', window.location.pathname + (query ? '?' + query : '') + window.location.hash);
})();
