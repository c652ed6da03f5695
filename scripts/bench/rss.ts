/** Preloaded (`node --import`) by the benchmark: prints the process's peak RSS at exit. */
process.on('exit', () => {
  process.stderr.write(`\nTANDEM_MAXRSS_KB=${process.resourceUsage().maxRSS}\n`)
})
