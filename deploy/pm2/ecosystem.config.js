// Torro key rotation daemon under PM2.
//
// Install (as root; PM2 then runs as the torro user):
//   npm install -g pm2
//   useradd --system --home-dir /var/lib/torro --shell /usr/sbin/nologin torro
//   python3 -m venv /opt/torro/venv && /opt/torro/venv/bin/pip install ./torro
//   install -d -o torro -g torro -m 0700 /var/lib/torro /var/log/torro
//   install -d -m 0755 /etc/torro
//   (umask 077; openssl rand -hex 32 > /etc/torro/master-key)
//   chown torro: /etc/torro/master-key && chmod 0400 /etc/torro/master-key
//   cp ecosystem.config.js /etc/torro/
//   sudo -H -u torro pm2 start /etc/torro/ecosystem.config.js
//   sudo -H -u torro pm2 save
//   pm2 startup systemd -u torro --hp /var/lib/torro
//
// Or without this file, the settings taken from the environment of the
// shell that runs pm2 start, the working directory from its own:
//   pm2 start /opt/torro/venv/bin/torro --name torro-daemon \
//     --interpreter none --kill-timeout 60000 -- daemon run
//
// pm2 stop torro-daemon sends SIGINT (PM2's default): a rotation in
// flight finishes, the daemon logs "daemon stopped (SIGINT)" and exits 0.
// pm2 sendSignal SIGHUP torro-daemon reopens the logs and reloads
// /var/lib/torro/.env; pm2 reload and pm2 restart stop and start the
// process instead. Further KEY_DAEMON_* settings (README) go in that .env
// or in env below. Keep the master key in its file, never in env: PM2
// shows env in pm2 env and pm2 show, and pm2 save writes it to disk.

module.exports = {
  apps: [
    {
      name: "torro-daemon",
      script: "/opt/torro/venv/bin/torro",
      args: ["daemon", "run"],
      // torro is an executable, not a Node.js script
      interpreter: "none",
      exec_mode: "fork",
      cwd: "/var/lib/torro",
      env: {
        KEY_STORAGE_PATH: "/var/lib/torro/keys",
        KEY_DAEMON_LOG_DIR: "/var/log/torro",
        KEY_DAEMON_PID_FILE: "/var/lib/torro/torro-daemon.pid",
        KEY_DAEMON_MASTER_KEY_FILE: "/etc/torro/master-key",
      },
      // Restart whenever the process ends other than by pm2 stop: a
      // crash, a kill, and also torro daemon stop (stop it with pm2 stop).
      // No stop_exit_codes: PM2 reports a death by signal as exit code 0,
      // so [0] would leave a killed daemon down. A process that dies
      // within min_uptime (a bad setting exits 2 at once) counts as
      // unstable; after max_restarts of those PM2 marks it errored. No
      // restart_delay: with one, PM2 shows an app it gave up on as
      // "waiting restart" rather than "errored".
      autorestart: true,
      min_uptime: 5000,
      max_restarts: 10,
      // ms between the stop signal and SIGKILL: time for a rotation in
      // flight (derivation plus a few writes) to finish.
      kill_timeout: 60000,
      // The daemon writes its own logs in KEY_DAEMON_LOG_DIR; these keep
      // what it echoes and anything printed before its logs open.
      out_file: "/var/log/torro/pm2-out.log",
      error_file: "/var/log/torro/pm2-error.log",
    },
  ],
};
