# Step 2: sign the package with the test certificate, install it as a primitive driver with
# `pnputil /add-driver hivetrack.inf /install` (into the driver store; the service runs from
# there), start it, and enable Driver Verifier (standard rules + low-resources simulation) for
# hivetrack.sys. Verifier settings take effect after a reboot: the script reboots, then run
# .\3-logoff.ps1. With -StartAtBoot the service is set to system start (tracking from boot).
# With -Legacy (Windows Server 2016/2019: no primitive driver package before build 18362)
# `hivetrack driver install --legacy` installs it into System32\drivers instead of pnputil.
param([switch]$StartAtBoot, [switch]$Legacy)
. "$PSScriptRoot\common.ps1"
Assert-Admin
foreach ($f in 'hivetrack.sys', 'hivetrack.inf', 'hivetrack.exe') {
    if (-not (Test-Path (Join-Path $Package $f))) { throw "Missing $f in $Package (copy target/package/ there)." }
}
$cert = Get-ChildItem Cert:\LocalMachine\My | Where-Object Subject -eq 'CN=hivetrack test signing' | Select-Object -First 1
if (-not $cert) { throw 'No test certificate: run .\1-prepare.ps1 first.' }

foreach ($f in 'hivetrack.sys', 'hivetrack.exe') {
    $sig = Set-AuthenticodeSignature -FilePath (Join-Path $Package $f) -Certificate $cert -HashAlgorithm SHA256
    if ($sig.Status -notin 'Valid', 'UnknownError') { throw "Signing $f failed: $($sig.StatusMessage)" }
}
if ($Legacy) {
    # The SCM route (usermode-client/README.md, `hivetrack driver`): no catalog, no driver
    # store; the embedded signature of hivetrack.sys is what test signing checks.
    $legacyArgs = @('driver', 'install', '--legacy', (Join-Path $Package 'hivetrack.sys'))
    if ($StartAtBoot) { $legacyArgs += '--boot' }
    $installed = Invoke-Hivetrack $legacyArgs
    $installed.Text | Set-Content (Join-Path $Results 'driver-install-legacy.txt')
    if ($installed.Code -ne 0) { throw "hivetrack driver install --legacy failed ($($installed.Code)): $($installed.Text) (a failed start leaves the service installed: run .\4-uninstall.ps1 -Legacy before retrying)" }
    # --boot sets system start only after the first start succeeded (audit 23a, H1): Start = 1.
    $start = (Get-ItemProperty 'HKLM:\SYSTEM\CurrentControlSet\Services\hivetrack').Start
    $wantStart = if ($StartAtBoot) { 1 } else { 3 }
    if ($start -ne $wantStart) { throw "after driver install --legacy the service's Start is $start, expected $wantStart" }
    $image = (Get-ItemProperty 'HKLM:\SYSTEM\CurrentControlSet\Services\hivetrack').ImagePath
    if ($image -notmatch 'System32\\drivers\\hivetrack\.sys$') { throw "ImagePath is $image, expected System32\drivers (DIRID 12)" }
    $wanted = if ((Get-Content $Inf -Raw) -match 'DefaultAltitude\s*=\s*"([0-9.]+)"') { $Matches[1] } else { $null }
    $altitude = (Get-ItemProperty 'HKLM:\SYSTEM\CurrentControlSet\Services\hivetrack\Parameters' -ErrorAction SilentlyContinue).Altitude
    if (-not $wanted -or $altitude -ne $wanted) { throw "Parameters\Altitude is '$altitude', the INF says '$wanted'" }
} else {
    # A signed catalog for CatalogFile=hivetrack.cat: the driver store takes no package without
    # one (Learn, "Driver Store": "The catalog file must be signed with a trusted digital
    # signature"). Made with Inf2Cat (WDK) when present; otherwise the package must bring it (the
    # `cargo make` package does; `cargo xtask build`'s does not).
    $catalog = Join-Path $Package 'hivetrack.cat'
    $inf2cat = Get-Command Inf2Cat.exe -ErrorAction SilentlyContinue
    if ($inf2cat) {
        $made = Invoke-Native { & $inf2cat.Source /driver:$Package /os:10_X64 }
        if ($made.Code -ne 0) { throw "Inf2Cat failed ($($made.Code)): $($made.Text)" }
    }
    if (-not (Test-Path $catalog)) {
        throw 'No hivetrack.cat and no Inf2Cat.exe: install the WDK on this VM, or copy the package `cargo make` builds (it has the catalog).'
    }
    $catSig = Set-AuthenticodeSignature -FilePath $catalog -Certificate $cert -HashAlgorithm SHA256
    if ($catSig.Status -notin 'Valid', 'UnknownError') { throw "Signing hivetrack.cat failed: $($catSig.StatusMessage)" }

    $out = & pnputil.exe /add-driver $Inf /install
    $out | Set-Content (Join-Path $Results 'pnputil-add-driver.txt')
    if (-not (Test-PnputilOk $LASTEXITCODE)) { throw "pnputil /add-driver failed ($LASTEXITCODE): $out" }
    if ($LASTEXITCODE -eq 3010) { Write-Warning 'pnputil: installed, a reboot is required (3010)' }
    $svc = Get-Service hivetrack -ErrorAction SilentlyContinue
    if (-not $svc) { throw 'The INF did not create the hivetrack service.' }
    # The INF's AddReg wrote Parameters\Altitude (the driver falls back to its built-in default
    # without it, which would hide an AddReg regression).
    $wanted = if ((Get-Content $Inf -Raw) -match 'DefaultAltitude\s*=\s*"([0-9.]+)"') { $Matches[1] } else { $null }
    $altitude = (Get-ItemProperty 'HKLM:\SYSTEM\CurrentControlSet\Services\hivetrack\Parameters' -ErrorAction SilentlyContinue).Altitude
    if (-not $wanted -or $altitude -ne $wanted) { throw "Parameters\Altitude is '$altitude', the INF says '$wanted'" }
    $image = (Get-ItemProperty 'HKLM:\SYSTEM\CurrentControlSet\Services\hivetrack').ImagePath
    if ($image -notmatch 'DriverStore\\FileRepository\\hivetrack\.inf_') {
        throw "ImagePath is $image, expected the driver store (DIRID 13)"
    }
    # The update promise (README step 2; audit 21c M2): an administrator's `start= system` and an
    # edited Parameters\Altitude survive `pnputil /add-driver /install` run again (AddService flag
    # 0x10, AddReg flag 0x2, which check-inf requires). Re-adding the identical package may not
    # re-run the INF at all, so a kept value here is not proof; a reset one is a failure.
    $serviceKey = 'HKLM:\SYSTEM\CurrentControlSet\Services\hivetrack'
    sc.exe config hivetrack start= system | Out-Null
    Set-ItemProperty -Path "$serviceKey\Parameters" -Name Altitude -Value "$wanted.5"
    $again = & pnputil.exe /add-driver $Inf /install
    $again | Set-Content (Join-Path $Results 'pnputil-add-driver-again.txt')
    if (-not (Test-PnputilOk $LASTEXITCODE)) { throw "pnputil /add-driver (again) failed ($LASTEXITCODE): $again" }
    $startAfter = (Get-ItemProperty $serviceKey).Start
    $altitudeAfter = (Get-ItemProperty "$serviceKey\Parameters").Altitude
    if ($startAfter -ne 1) { throw "a second pnputil /add-driver reset Start to $startAfter (the INF's AddService lacks 0x10?)" }
    if ($altitudeAfter -ne "$wanted.5") { throw "a second pnputil /add-driver reset Parameters\Altitude to $altitudeAfter (the AddReg lacks 0x2?)" }
    Write-Host "A second pnputil /add-driver kept start= system and the edited altitude (not proof if it did not re-run the INF: see results\pnputil-add-driver-again.txt)."
    Set-ItemProperty -Path "$serviceKey\Parameters" -Name Altitude -Value $wanted
}
if (-not $StartAtBoot) { sc.exe config hivetrack start= demand | Out-Null }
sc.exe start hivetrack | Out-Null
$v = Invoke-Hivetrack @('version')
$v.Text | Set-Content (Join-Path $Results 'version.txt')
if ($v.Code -ne 0) { throw "hivetrack version failed ($($v.Code)): $($v.Text)" }
Write-Host $v.Text

# Standard flags (0x209BB: Learn, "Driver Verifier command syntax") plus low-resources
# simulation (0x4) and the code integrity checks (0x2000000, bit 25, Windows 10 and later:
# an executable pool type or page protection is a bugcheck, as memory integrity (HVCI)
# requires; Learn, "Code Integrity Checks"): 0x20209BF. Takes effect at the next boot.
verifier /flags 0x20209BF /driver hivetrack.sys | Out-Null
$settings = verifier /querysettings | Out-String
$settings | Set-Content (Join-Path $Results 'verifier-settings.txt')
if ($settings -notmatch 'hivetrack\.sys') { throw "verifier /querysettings does not list hivetrack.sys: $settings" }
# The "Name: Enabled|Disabled" lines of /querysettings (Learn, "Low Resources Simulation"
# shows them); this option's label is not in that sample, so its absence is only a warning.
if ($settings -match '(?m)^Code integrity checks:\s*Disabled') {
    throw "verifier /querysettings shows the code integrity checks disabled: $settings"
} elseif ($settings -notmatch '(?m)^Code integrity checks:\s*Enabled') {
    Write-Warning 'No "Code integrity checks: Enabled" line in verifier /querysettings: check results\verifier-settings.txt'
}
Set-KitState 'installed-verifier-pending-reboot'
Write-Host 'Installed; Driver Verifier armed for hivetrack.sys. Reboot, wait 8 minutes (the'
Write-Host 'low-resources grace period), then run .\3-logoff.ps1.'
Restart-Computer -Confirm
