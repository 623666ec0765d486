// The log-in form, shown only when MONAI Label's auth is on and this tab has no token.

import { logIn } from './api.js';

const $ = (id) => document.getElementById(id);
let loggedIn = null;

// Show the form; resolves once the user has logged in.
export function askLogIn() {
  $('login').hidden = false;
  $('username').focus();
  return new Promise((resolve) => { loggedIn = resolve; });
}

$('login').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    await logIn($('username').value, $('password').value);
  } catch (error) {
    $('login-error').textContent = error.message;
    return;
  }
  $('login').hidden = true;
  $('password').value = '';
  $('login-error').textContent = '';
  if (loggedIn) loggedIn();
});
