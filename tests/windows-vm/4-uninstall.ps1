# Step 4: stop the service and remove the primitive driver package with
# `pnputil /delete-driver oemN.inf /uninstall` (the driver store undoes what the install did),
# reset Driver Verifier, remove the test certificate, and check nothing is left. Test signing stays on (bcdedit /set testsigning off
# and a reboot turn it off).
. "$PSScriptRoot\common.ps1"
Assert-Admin
$script:Failures = 0
Invoke-Native { sc.exe stop hivetrack } | Out-Null
# The published name (oemN.inf) of every driver store package whose original name is hivetrack.inf.
$published = @()
$current = $null
foreach ($line in (& pnputil.exe /enum-drivers)) {
    if ($line -match '^\s*Published Name\s*:\s*(\S+)') { $current = $Matches[1] }
    elseif ($line -match '^\s*Original Name\s*:\s*hivetrack\.inf\s*$' -and $current) { $published += $current }
}
foreach ($oem in $published) {
    & pnputil.exe /delete-driver $oem /uninstall | Add-Content (Join-Path $Results 'pnputil-delete-driver.txt')
    Write-Result "pnputil /delete-driver $oem /uninstall" ($LASTEXITCODE -eq 0) ''
}
Write-Result 'a hivetrack.inf package was in the driver store' ($published.Count -gt 0) ''
verifier /reset | Out-Null
Write-Result 'service removed' (-not (Get-Service hivetrack -ErrorAction SilentlyContinue)) ''
$left = Get-ChildItem "$env:SystemRoot\System32\DriverStore\FileRepository" -Filter 'hivetrack.inf_*' -ErrorAction SilentlyContinue
Write-Result 'driver store folder removed' (-not $left) "$left"
foreach ($store in 'My', 'Root', 'TrustedPublisher') {
    Get-ChildItem "Cert:\LocalMachine\$store" | Where-Object Subject -eq 'CN=hivetrack test signing' | Remove-Item
}
Remove-Item $State -ErrorAction SilentlyContinue
exit $script:Failures
