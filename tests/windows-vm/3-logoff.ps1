# Step 3: the logoff scenario for real (kept in step with the emulator's `logoff` scenario,
# kernel-emulator/src/scenario/tracking.rs): a test hive is loaded, a helper process keeps
# one key of it open, `reg unload` fails, `hivetrack holders --json` names the helper (with
# its session and user) and, with stack capture on for the hive, the stack of its open resolved
# to modules (issue 16: RtlWalkFrameChain's user walk and the load-image notifications on real
# Windows), a second process opens the same key (served by the key cache: same name), the
# helper exits, `hivetrack wait` (the driver's wait-free request) returns, `reg unload`
# succeeds; then stats, the unload history and `verifier /query` are collected into
# .\results\.
. "$PSScriptRoot\common.ps1"
Assert-Admin
$script:Failures = 0
Remove-Item (Join-Path $Results 'summary.txt') -ErrorAction SilentlyContinue
Assert-Verified

Invoke-Native { sc.exe start hivetrack } | Out-Null   # demand start; already running is fine
$stats = Invoke-Hivetrack @('stats', '--json')
$stats.Text | Set-Content (Join-Path $Results 'stats-before.json')
$status = ($stats.Text | ConvertFrom-Json).counters | Where-Object name -eq 'tracking_status'
Write-Result 'live tracking is on' ($stats.Code -eq 0 -and $status.value -eq 0) "tracking_status=$($status.value)"

# A hive file of our own, loaded under HKU.
$loaded = New-TestHive 'HivetrackKit' 'Software\Policies'
Write-Result 'test hive loaded' $loaded 'HKU\HivetrackKit'

# Open-time stacks for the test hive (issue 16): on before the helper opens its key.
$cap = Invoke-Hivetrack @('capture', 'on', '--hive', 'HKU\HivetrackKit', '--json')
$cap.Text | Set-Content (Join-Path $Results 'capture-on.json')
Write-Result 'stack capture is on for the test hive' ($cap.Code -eq 0) $cap.Text

# The helper keeps HKU\HivetrackKit\Software\Policies open, as a leaking application would.
$helper = Start-Process powershell.exe -PassThru -WindowStyle Hidden -ArgumentList @(
    '-NoProfile', '-Command',
    '$k = [Microsoft.Win32.Registry]::Users.OpenSubKey("HivetrackKit\Software\Policies"); Start-Sleep -Seconds 600')
Start-Sleep -Seconds 3

Invoke-Native { reg unload 'HKU\HivetrackKit' } | Out-Null
Write-Result 'reg unload fails while the helper holds a key' ($LASTEXITCODE -ne 0) "exit $LASTEXITCODE"

$h = Invoke-Hivetrack @('holders', 'HKU\HivetrackKit', '--json')
$h.Text | Set-Content (Join-Path $Results 'holders.json')
$doc = $h.Text | ConvertFrom-Json
$mine = @($doc.holders | Where-Object pid -eq $helper.Id)
Write-Result 'holders names the helper' ($mine.Count -eq 1) "pid $($helper.Id), image $($mine.image)"
$policies = @($mine.keys | Where-Object { $_.path -like '*\Software\Policies' })
Write-Result 'with its Software\Policies key and open time' ($policies.Count -ge 1 -and $policies[0].opened_at) ($policies | ConvertTo-Json -Compress)
# Its open's user-mode stack, resolved to modules the driver saw load (KernelBase.dll is on
# every registry open's path). STACK_EMPTY here means this Windows's RtlWalkFrameChain gave
# no user frames from a registry callback (the Windows Research Kernel's x64 walk refuses).
$st = Invoke-Hivetrack @('holders', 'HKU\HivetrackKit', '--stacks', '--json')
$st.Text | Set-Content (Join-Path $Results 'holders-stacks.json')
$stKey = @(@(($st.Text | ConvertFrom-Json).holders | Where-Object pid -eq $helper.Id).keys |
    Where-Object { $_.path -like '*\Software\Policies' }) | Select-Object -First 1
$frames = @($stKey.stack.frames)
Write-Result 'the helper''s open has a user-mode stack resolved to modules' `
    ($frames.Count -gt 0 -and @($frames | Where-Object { $_.module -like '*KernelBase.dll' }).Count -ge 1) `
    (($stKey.stack | ConvertTo-Json -Compress -Depth 4))
$mods = Invoke-Hivetrack @('modules', 'HKU\HivetrackKit', '--json')
$mods.Text | Set-Content (Join-Path $Results 'modules.json')
Write-Result 'hivetrack modules ranks the code that opened the held key' `
    ($mods.Code -eq 0 -and @(($mods.Text | ConvertFrom-Json).modules).Count -ge 1) ''
Invoke-Hivetrack @('capture', 'off') | Out-Null
$session = (Get-Process -Id $helper.Id).SessionId
Write-Result 'the helper''s session and user (holder identity)' `
    ($mine.session -eq $session -and $mine.user -like "*\$env:USERNAME") "session $($mine.session), user $($mine.user)"

# A second handle to the same key: its open is served by the key cache (ObjectID, no name
# fetched) and must carry the same name.
$second = Start-Process powershell.exe -PassThru -WindowStyle Hidden -ArgumentList @(
    '-NoProfile', '-Command',
    '$k = [Microsoft.Win32.Registry]::Users.OpenSubKey("HivetrackKit\Software\Policies"); Start-Sleep -Seconds 600')
Start-Sleep -Seconds 3
$again = (Invoke-Hivetrack @('holders', 'HKU\HivetrackKit', '--json')).Text | ConvertFrom-Json
$theirs = @(@($again.holders | Where-Object pid -eq $second.Id).keys | Where-Object { $_.path -like '*\Software\Policies' })
Write-Result 'a second open of the held key has the same name (key cache)' ($theirs.Count -ge 1) ($theirs | ConvertTo-Json -Compress)
Stop-Process -Id $second.Id -Force
$svc = @($again.holders | Where-Object { $_.services.Count -gt 0 })
# Information for the report, not a check: which service hosts hold keys here varies.
Write-Host "  service hosts holding keys: $((($svc | ForEach-Object { "$($_.pid): $($_.services -join ',')" }) -join '; '))"

$history = Invoke-Hivetrack @('unload-history', '--json')
$history.Text | Set-Content (Join-Path $Results 'unload-history.json')
$attempt = @(($history.Text | ConvertFrom-Json).attempts | Where-Object { -not $_.succeeded }) | Select-Object -First 1
Write-Result 'the unload history holds the failed attempt with the helper' `
    ($attempt -and @($attempt.holders | Where-Object pid -eq $helper.Id).Count -eq 1) ($attempt | ConvertTo-Json -Compress -Depth 4)

# The driver's own timer ends a wait on a held hive (wait-free IOCTL, not polling).
$short = Invoke-Hivetrack @('wait', 'HKU\HivetrackKit', '--timeout', '2', '--json')
$shortDoc = $short.Text | ConvertFrom-Json
Write-Result 'a 2 s wait on the held hive times out in the driver' `
    ($short.Code -eq 1 -and $shortDoc.method -eq 'wait-free' -and -not $shortDoc.free) $short.Text

$waiter = Start-Job -ScriptBlock { param($exe) & $exe wait 'HKU\HivetrackKit' --timeout 60 --json; $LASTEXITCODE } -ArgumentList $Exe
Start-Sleep -Seconds 2   # the wait-free IRP is pending in the driver now
Stop-Process -Id $helper.Id -Force
$waited = @(Receive-Job -Job $waiter -Wait -AutoRemoveJob)
$waitDoc = ($waited | Select-Object -SkipLast 1) -join "`n" | ConvertFrom-Json
Write-Result 'hivetrack wait returns once the helper exits (wait-free, completed by the exit)' `
    (($waited | Select-Object -Last 1) -eq 0 -and $waitDoc.method -eq 'wait-free' -and $waitDoc.free) ($waited -join ' ')

# Ctrl+C / process exit cancels a pending wait: the IRP must complete (STATUS_CANCELLED),
# or the killed process would hang in its exit.
$again = Start-Process -FilePath $Exe -ArgumentList @('wait', 'HKLM\SOFTWARE', '--timeout', '600') -PassThru -WindowStyle Hidden
Start-Sleep -Seconds 2
Stop-Process -Id $again.Id -Force
Write-Result 'a killed waiter exits (its pending IRP was cancelled)' ($again.WaitForExit(10000)) "pid $($again.Id)"

reg unload 'HKU\HivetrackKit' | Out-Null
Write-Result 'reg unload succeeds (the driver pins nothing)' ($LASTEXITCODE -eq 0) "exit $LASTEXITCODE"

# Verifier's counters while the helper's key is still tracked would be better; these are
# taken with the test hive's keys closed, so the pool peak, not the current count, tells.
$statsAfter = (Invoke-Hivetrack @('stats', '--json')).Text
$statsAfter | Set-Content (Join-Path $Results 'stats-after.json')
$budget = (($statsAfter | ConvertFrom-Json).counters | Where-Object name -eq 'budget_peak_bytes').value
$queryAfter = verifier /query | Out-String
$queryAfter | Set-Content (Join-Path $Results 'verifier-query.txt')
Write-FaultCount
$queryBefore = Get-Content (Join-Path $Results 'verifier-query-before.txt') -Raw
Write-VerifierCoverage $queryBefore $queryAfter ([int64]$budget)
Write-Host ''
Write-Host "Results in $Results ($script:Failures failure(s)). Next: .\4-uninstall.ps1"
exit $script:Failures
