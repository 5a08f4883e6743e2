# Step 4: stop the service and remove the primitive driver package with
# `pnputil /delete-driver oemN.inf /uninstall` (the driver store undoes what the install did),
# reset Driver Verifier, remove the test certificate, and check nothing is left. Test signing stays on (bcdedit /set testsigning off
# and a reboot turn it off).
# With -Legacy: what `2-install.ps1 -Legacy` installed, removed by `hivetrack driver uninstall
# --legacy` (service and System32\drivers\hivetrack.sys) instead of pnputil.
param([switch]$Legacy)
. "$PSScriptRoot\common.ps1"
Assert-Admin
$script:Failures = 0
Invoke-Native { sc.exe stop hivetrack } | Out-Null
# `sc stop` with a handle to \\.\HiveTrack open only marks the driver for unload (WRK
# loadunld.c: IopCheckUnloadDriver sets DOE_UNLOAD_PENDING, IopUnloadDriver returns
# STATUS_SUCCESS): wait for STOPPED, and say who may hold it.
$deadline = (Get-Date).AddSeconds(30)
while ((Get-Service hivetrack -ErrorAction SilentlyContinue).Status -notin 'Stopped', $null -and (Get-Date) -lt $deadline) { Start-Sleep -Seconds 1 }
$st = (Get-Service hivetrack -ErrorAction SilentlyContinue).Status
Write-Result 'hivetrack stopped' ($st -in 'Stopped', $null) $(if ($st -in 'Stopped', $null) { '' } else { "still $st`: a handle to \\.\HiveTrack is open (hivetracksvc? a hivetrack wait?)" })
if ($Legacy) {
    $removed = Invoke-Hivetrack @('driver', 'uninstall', '--legacy')
    $removed.Text | Set-Content (Join-Path $Results 'driver-uninstall-legacy.txt')
    # Exit 5: the driver did not stop (a handle to \\.\HiveTrack still open), the service is only
    # marked for deletion and the driver stays loaded until that handle closes or a restart.
    $note = if ($removed.Code -eq 5) { 'driver still loaded (exit 5): close the handle holder (hivetrack service uninstall) or restart, then run this again' } else { "exit $($removed.Code)" }
    Write-Result 'hivetrack driver uninstall --legacy' ($removed.Code -eq 0) "${note}: $($removed.Text)"
    $file = "$env:SystemRoot\System32\drivers\hivetrack.sys"
    Write-Result 'System32\drivers\hivetrack.sys removed (or at the next restart)' ((-not (Test-Path $file)) -or $removed.Text -match 'next restart') ''
} else {
    # The published name (oemN.inf) of every driver store package whose original name is hivetrack.inf.
    $published = @()
    $current = $null
    foreach ($line in (& pnputil.exe /enum-drivers)) {
        if ($line -match '^\s*Published Name\s*:\s*(\S+)') { $current = $Matches[1] }
        elseif ($line -match '^\s*Original Name\s*:\s*hivetrack\.inf\s*$' -and $current) { $published += $current }
    }
    foreach ($oem in $published) {
        & pnputil.exe /delete-driver $oem /uninstall | Add-Content (Join-Path $Results 'pnputil-delete-driver.txt')
        $code = $LASTEXITCODE
        Write-Result "pnputil /delete-driver $oem /uninstall" (Test-PnputilOk $code) $(if ($code -eq 3010) { 'removed; reboot required (3010)' } else { "exit $code" })
    }
    Write-Result 'a hivetrack.inf package was in the driver store' ($published.Count -gt 0) ''
}
verifier /reset | Out-Null
Write-Result 'service removed' (-not (Get-Service hivetrack -ErrorAction SilentlyContinue)) ''
if (-not $Legacy) {
    $left = Get-ChildItem "$env:SystemRoot\System32\DriverStore\FileRepository" -Filter 'hivetrack.inf_*' -ErrorAction SilentlyContinue
    Write-Result 'driver store folder removed' (-not $left) "$left"
}
foreach ($store in 'My', 'Root', 'TrustedPublisher') {
    Get-ChildItem "Cert:\LocalMachine\$store" | Where-Object Subject -eq 'CN=hivetrack test signing' | Remove-Item
}
Remove-Item $State -ErrorAction SilentlyContinue
exit $script:Failures
